"""`chord eval CONFIG [--data FILE] [--k K] [--checkpoint DIR] [--out FILE]`: avg@k on a benchmark.

    run_eval(cfg, data=None, k=None, checkpoint=None, out=None) -> exit status

The benchmark is a prompt file in the data loader's format ({"prompt" | "messages", "answer"},
JSONL or Parquet; default: the held-out prompts training evaluates on -- the generated task's,
else data.eval_path), tokenised and chat-templated as training does. Each prompt is sampled k
times (default train.eval_samples) at the rollout temperature -- the paper's protocol: avg@32 on
AIME, avg@8 on AMC -- by the configured rollout engine (in-process transformers, or SGLang per
rollout.*), and every response is scored with the task's reward (data.reward) in reward worker
processes.

Sampling is training's evaluation's (rollout/sampling.py: the same stop ids, settings and seed,
the seed of the checkpoint's step, 0 for the base model, all prompts in one call): `chord eval`
of the weights training evaluated after N updates, on the same prompts with the same k, reports
the accuracy that run logged as eval/accuracy at step N, sample for sample.

The model is the config's (model.hf_path; for the toy task the cached base model), or the
weights of a training checkpoint (--checkpoint: a step folder or a root with a `latest`
pointer), which are loaded into the trainer's Megatron model for `cfg` and pushed to the
rollout engine exactly as a weight sync does (to SGLang servers by rollout.weight_sync; under
torchrun every rank runs run_eval, rank 0 evaluates).

A response cut by the length limit scores as training scores it (rewards/scoring.py), unless
the reward decides that case itself from metadata["finish_reason"] (the "math" reward: -1 only
without a boxed answer). avg@k is the fraction of samples with reward 1 (= the mean over prompts
of each prompt's fraction, every prompt having k samples).

Prints one summary line; with `out`, writes one JSON record per prompt (answer, rewards,
responses, finish reasons, lengths) and a final {"summary": ...} record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import Config, load_config


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    return run_eval(cfg, data=args.data, k=args.k, checkpoint=args.checkpoint, out=args.out)


def benchmark(cfg: Config, data: Optional[str], tokenizer) -> Tuple[List[Any], str]:
    """The PromptRows to evaluate on, and the file they come from."""
    from ..data import load_prompts

    if data is None and cfg.data.task == "arith":  # the held-out file training writes and evaluates on
        from ..data.task import load_task

        task = load_task(cfg)
        return task.evaluation, task.evaluation_source
    path = data or cfg.data.eval_path
    if path is None:
        raise ValueError("chord eval: no benchmark file: pass --data FILE or set data.eval_path")
    rows, skipped = load_prompts(
        path, tokenizer, max_prompt_tokens=cfg.data.max_prompt_tokens, on_bad_row=cfg.data.on_bad_row
    )
    if skipped:
        print(f"chord eval: skipped rows of {path}: {dict(skipped)}", file=sys.stderr)
    return rows, str(path)


def model_weights(cfg: Config, checkpoint: Optional[str]):
    """(trainer engine or None, Megatron full tensors to push or None, a label of the model, the
    number of updates the weights have had: the checkpoint's step, 0 for the base model).
    With a checkpoint every rank of the job calls this (it builds the trainer's model for
    cfg's layout, and iterating the tensors is a collective)."""
    if cfg.model.hf_path:  # the model section must describe the checkpoint (ConfigError naming the key)
        from ..hf.config import check_model_config

        check_model_config(cfg.model)
    if checkpoint:
        from ..train.engine import MegatronEngine

        engine = MegatronEngine(cfg)
        step, _ = engine.load(checkpoint)
        return engine, engine.export_weights(), f"checkpoint {checkpoint} (step {step})", step
    if cfg.model.hf_path:
        return None, None, cfg.model.hf_path, 0
    from ..demo.base_model import base_weights

    full = base_weights(cfg)
    if full is None:
        return None, None, "random initial weights (base.steps = 0, no model.hf_path)", 0
    return None, iter(full.items()), "the cached base model", 0


def score_samples(
    reward: str, prompts, rollouts, tokenizer, *, workers: int = 2, timeout_s: float = 30.0
) -> List[float]:
    """Rewards of `rollouts` (r.prompt_index indexes `prompts`), scored as training scores them."""
    from ..rewards.scoring import Scorer, score

    if not rollouts:
        return []
    with Scorer(reward, num_workers=workers, timeout_s=timeout_s) as scorer:
        return score(scorer, reward, tokenizer, rollouts, prompts)


def check_inputs(cfg: Config, checkpoint: Optional[str]) -> None:
    """A misspelt reward or a checkpoint path that holds none: one line now, not after the model is built."""
    from ..demo.arith import register_arith_reward
    from ..rewards import get_reward

    register_arith_reward()
    get_reward(cfg.data.reward, key="data.reward")
    if checkpoint:
        from ..train.checkpoint import resolve_checkpoint

        resolve_checkpoint(checkpoint)


def run_eval(
    cfg: Config,
    *,
    data: Optional[str] = None,
    k: Optional[int] = None,
    checkpoint: Optional[str] = None,
    out: Optional[str] = None,
) -> int:
    from ..data.hf_tokenizer import load_tokenizer
    from ..rollout.engine import generate_complete
    from ..rollout.factory import rollout_engine_from_config
    from ..rollout.sampling import evaluation_params
    from ..train.parallel import is_rank0
    from ..weight_sync.convert import Layout, megatron_to_hf

    k = k or cfg.train.eval_samples
    if k < 1:
        raise ValueError(f"chord eval: k must be >= 1, got {k}")
    check_inputs(cfg, checkpoint)  # before minutes go into a model
    trainer, named, label, updates = model_weights(cfg, checkpoint)
    if not is_rank0():  # other ranks only take part in gathering the checkpoint's tensors
        for _ in named or ():
            pass
        return 0
    tokenizer = load_tokenizer(cfg)
    prompts, source = benchmark(cfg, data, tokenizer)
    from ..demo.arith import register_arith_reward

    register_arith_reward()
    rollout = rollout_engine_from_config(cfg, eos_token_id=tokenizer.eos_id)
    try:
        if named is not None:
            rollout.update_weights(megatron_to_hf(named, Layout.from_model_config(cfg.model, cfg.megatron)), "eval")
        del trainer
        t0 = time.perf_counter()
        # One call, as training's evaluation makes it: engines batch and seed per call.
        params = evaluation_params(cfg, tokenizer, updates)
        rollouts = generate_complete(rollout, [p.prompt_ids for p in prompts], k, params)[0]
        gen_s = time.perf_counter() - t0
    finally:
        rollout.close()
    rewards = score_samples(cfg.data.reward, prompts, rollouts, tokenizer)
    summary = summarise(prompts, rollouts, rewards, k, label=label, data=source, seconds=gen_s)
    print(
        f"avg@{k} accuracy {summary['accuracy']:.4f} on {summary['prompts']} prompts ({summary['samples']} samples) "
        f"of {summary['data']}: mean reward {summary['mean_reward']:.4f}, mean response {summary['mean_response_tokens']:.1f} "
        f"tokens, truncated {summary['truncated']:.3f}; model: {label}"
    )
    if out:
        write_results(out, prompts, rollouts, rewards, tokenizer, summary)
        print(f"per-prompt results: {out}")
    return 0


def summarise(prompts, rollouts, rewards: Sequence[float], k: int, **extra) -> Dict[str, Any]:
    n = len(rollouts)
    return {
        "k": k,
        "prompts": len(prompts),
        "samples": n,
        "accuracy": sum(r == 1.0 for r in rewards) / max(n, 1),
        "mean_reward": sum(rewards) / max(n, 1),
        "mean_response_tokens": sum(len(r.response_ids) for r in rollouts) / max(n, 1),
        "truncated": sum(r.finish_reason == "length" for r in rollouts) / max(n, 1),
        **{key: (str(v) if key == "data" else v) for key, v in extra.items()},
    }


def write_results(out: str | Path, prompts, rollouts, rewards, tokenizer, summary: Dict[str, Any]) -> None:
    by_prompt: Dict[int, List[int]] = {}
    for i, r in enumerate(rollouts):
        by_prompt.setdefault(r.prompt_index, []).append(i)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p_idx, p in enumerate(prompts):
            idx = by_prompt.get(p_idx, [])
            rs = [rewards[i] for i in idx]
            f.write(
                json.dumps(
                    {
                        "index": p_idx,
                        "source": p.source,
                        "prompt": p.prompt,
                        "answer": p.answer,
                        "accuracy": sum(x == 1.0 for x in rs) / max(len(rs), 1),
                        "mean_reward": sum(rs) / max(len(rs), 1),
                        "rewards": rs,
                        "responses": [tokenizer.decode(rollouts[i].response_ids) for i in idx],
                        "finish_reasons": [rollouts[i].finish_reason for i in idx],
                        "response_tokens": [len(rollouts[i].response_ids) for i in idx],
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
        f.write(json.dumps({"summary": summary}) + "\n")
