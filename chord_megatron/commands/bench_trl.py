"""`chord bench loop CONFIG --vs-trl`: the same GRPO run trained by TRL's GRPOTrainer (trl==1.16.0).

TRL is an optional extra (`pip install -e '.[trl]'`); without it --vs-trl stops in one line.
Nothing new is trained for TRL: the base model the chord runs start from (the demo's cached base
model, or model.hf_path) is written by hf/export.py into a temporary folder, and TRL loads that
folder's model and tokenizer. The bench forces the grpo variant (commands/compare_variants.py) on both
sides, so chord trains plain GRPO (mu = 0 at every step, no expert rows).

What TRL gets, setting by setting (grpo_config_kwargs; TRL 1.16's GRPOTrainer source read for
each), and what else is made equal:

    chord                                   TRL GRPOConfig / GRPOTrainer
    rollout.prompts_per_step P              one generation batch of P x K completions per step:
      x rollout.samples_per_prompt K          num_generations=K, per_device_train_batch_size x
    train.micro_batch_size                    gradient_accumulation_steps = P x K (per device: the
                                              largest divisor of P x K up to the micro-batch size)
    rollout.max_new_tokens                  max_completion_length
    rollout.temperature, top_p              temperature, top_p (top_k=0, min_p=None,
                                              repetition_penalty=1: off, as in chord); TRL divides
                                              the trainer's logits by the temperature, as chord does
    optim.lr, lr_warmup_steps               learning_rate, warmup_steps
    optim.lr_schedule cosine | constant     lr_scheduler_type cosine_with_min_lr (min_lr=optim.min_lr)
      | linear                                | constant_with_warmup | linear (min_lr 0 only), over
                                              max_steps = the bench's steps (chord's decay horizon)
    optim.adam_beta1/2, adam_eps,           adam_beta1/2, adam_epsilon, weight_decay, optim=adamw_torch
      weight_decay (Megatron's AdamW)
    optim.grad_clip                         max_grad_norm
    algorithm.clip_low / clip_high          epsilon / epsilon_high (token-level ratio,
                                              importance_sampling_level=token)
    no KL term, no entropy bonus            beta=0 (no reference model), entropy_coef=0
    token-mean over every on-policy token   loss_type=dapo: the masked sum over the global batch
      of the global batch (algo/losses.py:    divided by its number of completion tokens (the
      one denominator per row kind)           eos included, as chord trains it)
    one update per rollout batch            num_iterations=1 (old log-probs = the detached
                                              current ones, as with train.recompute_old_logp=false)
    algorithm.adv_scale std | none          scale_rewards group | none (unbiased group std both)
    cut responses train with reward -1      mask_truncated_completions=False
    train.seed                              seed
    bf16 on GPU (model.dtype)               bf16 mixed precision on the fp32 export; fp32 on CPU
    the in-process / SGLang engine          model.generate (use_vllm=False), no gradient
                                              checkpointing (GRPOConfig's default is on)

    prompts: the task's RL prompts of step 0, 1, ... in chord's order (Task.rl_prompts), as text
      that the exported tokenizer, called as TRL calls it, encodes back to chord's very ids
      (checked for every prompt); shuffle_dataset=False keeps the order.
    reward: chord's own scoring (rewards/scoring.score: the task's reward function in chord's
      worker process, a response cut by the length limit scores -1) of TRL's completion ids.
    held-out accuracy: avg@k (train.eval_samples) on the task's held-out prompts at the rollout
      temperature, with the same scoring, before the first update and after every
      train.eval_every-th and the last (bench_trl_eval.py).
    steps/s: as chord's, between the end of the first and of the last step (a clock read at
      every on_step_end), so start-up is left out and evaluations in between count.

Left different: TRL's advantage is (R - mean) / (std + 1e-4), chord's adds algorithm.adv_eps
(1e-6) -- 0 for both in a group whose rewards are all equal, else a relative difference of about
1e-4 / std (0.3% for a group of 8 with one reward 0.1 apart); chord clamps log-ratios at +-20,
which never binds with one update per batch (ratio = 1). The samples themselves differ (another
sampler, another random stream), so the two curves agree up to sampling noise, not exactly.
Settings with no TRL counterpart are refused (check_comparable): dual_clip, tis_cap,
rollout.sync_every > 1, samples_per_prompt < 2, a linear schedule with min_lr > 0, and a run
without a base model to export (base.steps=0 and no model.hf_path). rollout.asynchronous is
allowed: it is how chord runs the same GRPO faster (generation during the update, one step off
policy), TRL runs it on-policy, and the two accuracy curves show what the overlap costs per step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ..config import Config
from ..errors import ChordError

TRL_VERSION = "1.16.0"
INSTALL = "pip install -e '.[trl]' (trl==1.16.0)"


class TrlBenchError(ChordError):
    exit_code, kind = 2, "bench loop --vs-trl"


def require_trl() -> str:
    """TRL's version, or a one-line TrlBenchError saying how to install the pinned one: the
    mapping below is written against 1.16's GRPOTrainer and could silently mean something else
    in another version."""
    try:
        version = metadata.version("trl")
    except metadata.PackageNotFoundError:
        raise TrlBenchError(f"TRL is not installed; it is an optional extra: {INSTALL}") from None
    if version != TRL_VERSION:
        raise TrlBenchError(f"TRL {version} is installed; the settings mapping is written for {TRL_VERSION}: {INSTALL}")
    return version


def check_comparable(cfg: Config, steps: int) -> None:
    """Refuse, in one line, a config whose run TRL cannot reproduce (before any run starts)."""
    a, r, o = cfg.algorithm, cfg.rollout, cfg.optim
    if steps < 3:
        raise TrlBenchError(f"--steps {steps}: steps/s needs at least 3 steps")
    nonzero = [s for s in range(steps) if a.mu.at(s) != 0.0]
    if nonzero:
        raise TrlBenchError(
            f"mu is not 0 at step {nonzero[0]} (algorithm.mu.adaptive / sft_steps): TRL trains plain GRPO only"
        )
    refused = {
        "algorithm.dual_clip": a.dual_clip is not None,
        "algorithm.tis_cap": a.tis_cap is not None,
        "rollout.sync_every": r.sync_every != 1,
    }
    for key, bad in refused.items():
        if bad:
            raise TrlBenchError(f"{key}: TRL's GRPOTrainer (no vLLM) has no counterpart; leave it at its default")
    if r.samples_per_prompt < 2:
        raise TrlBenchError(f"rollout.samples_per_prompt={r.samples_per_prompt}: TRL needs groups of 2 or more")
    if o.lr_schedule == "linear" and o.min_lr > 0:
        raise TrlBenchError("optim.lr_schedule=linear with min_lr > 0: TRL's linear schedule ends at 0")
    if not cfg.model.hf_path and cfg.base.steps == 0:
        raise TrlBenchError("base.steps=0 and no model.hf_path: there is no base model to give TRL the same weights")


def grpo_config_kwargs(cfg: Config, *, output_dir: str, bf16: bool) -> Dict[str, Any]:
    """GRPOConfig's keyword arguments for the run of `cfg` (train.steps = the bench's steps);
    the module docstring says why each is what it is. Pure: TRL is not imported."""
    r, a, o, t = cfg.rollout, cfg.algorithm, cfg.optim, cfg.train
    batch = r.prompts_per_step * r.samples_per_prompt
    # TRL splits the batch evenly: the largest divisor of it that fits in chord's micro-batch
    per_device = max(d for d in range(1, min(t.micro_batch_size, batch) + 1) if batch % d == 0)
    schedule: Dict[str, Any] = {
        "constant": {"lr_scheduler_type": "constant_with_warmup"},
        "cosine": {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr": o.min_lr}},
        "linear": {"lr_scheduler_type": "linear"},
    }[o.lr_schedule]
    return {
        # the batch: one generation of P prompts x K samples, one optimiser step
        "num_generations": r.samples_per_prompt,
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": batch // per_device,
        "max_steps": t.steps,
        "shuffle_dataset": False,
        "seed": t.seed,
        # sampling
        "max_completion_length": r.max_new_tokens,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "top_k": 0,
        "min_p": None,
        "repetition_penalty": 1.0,
        "use_vllm": False,
        # the loss
        "loss_type": "dapo",
        "beta": 0.0,
        "num_iterations": 1,
        "epsilon": a.clip_low,
        "epsilon_high": a.clip_high,
        "importance_sampling_level": "token",
        "scale_rewards": "group" if a.adv_scale == "std" else "none",
        "mask_truncated_completions": False,
        "entropy_coef": 0.0,
        # the optimiser
        "learning_rate": o.lr,
        "warmup_steps": o.lr_warmup_steps,
        **schedule,
        "optim": "adamw_torch",
        "adam_beta1": o.adam_beta1,
        "adam_beta2": o.adam_beta2,
        "adam_epsilon": o.adam_eps,
        "weight_decay": o.weight_decay,
        "max_grad_norm": o.grad_clip,
        # precision and memory: as chord (GRPOConfig turns both on by default)
        "bf16": bf16,
        "gradient_checkpointing": False,
        # no side work inside the timed steps: no logging, saving or TRL evaluation
        "output_dir": output_dir,
        "report_to": "none",
        "logging_strategy": "no",
        "save_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": True,
        "dataloader_pin_memory": False,  # the batches are prompt texts: nothing to pin
    }


@dataclass
class TrlInputs:
    """What every TRL run of a bench shares: the exported base model and the run's task."""

    cfg: Config
    model_dir: Path
    task: Any  # data.task.Task
    rows: List[Any]  # the RL prompt rows of steps 0 .. steps-1, in chord's order
    texts: List[str]  # the same prompts as text (ids checked)


def prepare(cfg: Config, work: Path) -> TrlInputs:
    """Export the base model into `work`/model and load the task (its files under `work`).
    Call after a chord run of the same config: it cached the demo's base model."""
    import torch
    from transformers import AutoTokenizer

    from ..data.task import load_task
    from ..demo.base_model import base_weights, cache_path
    from ..hf.export import export_hf

    cfg = cfg.replace(**{"train.output_dir": str(work)})
    if not cfg.model.hf_path and not cache_path(cfg).exists():
        raise RuntimeError(f"no cached base model at {cache_path(cfg)}: run chord first")
    task = load_task(cfg)
    model_dir = work / "model"
    # fp32 weights: TRL keeps them as its master copy (bf16 is autocast), as Megatron does
    export_hf(base_weights(cfg).items(), cfg, model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    rows = [row for step in range(cfg.train.steps) for row in task.rl_prompts(step, cfg.rollout.prompts_per_step)]
    texts = prompt_texts(tokenizer, rows)
    prompt_texts(tokenizer, task.evaluation)  # the held-out prompts go through the same tokenizer
    return TrlInputs(cfg, model_dir, task, rows, texts)


def prompt_texts(tokenizer, rows: Sequence[Any]) -> List[str]:
    """Each row's prompt as text that `tokenizer(text)` -- TRL's own call for a text prompt --
    encodes back to exactly the row's ids: decoded without special tokens (the demo's <bos>,
    which the tokenizer adds back), else with them (a chat template's markers). Refuses a
    prompt for which neither holds, since TRL would train on other prompts than chord."""
    ids = [list(r.prompt_ids) for r in rows]
    candidates = [tokenizer.batch_decode(ids, skip_special_tokens=skip) for skip in (True, False)]
    encoded = [tokenizer(texts)["input_ids"] for texts in candidates]
    out = []
    for i, want in enumerate(ids):
        match = [texts[i] for texts, back in zip(candidates, encoded) if list(back[i]) == want]
        if not match:
            raise TrlBenchError(
                f"prompt {i} ({candidates[1][i]!r}): the exported tokenizer encodes its text to "
                f"{list(encoded[1][i])[:12]}, chord trains on {want[:12]}: TRL would see another prompt"
            )
        out.append(match[0])
    return out


def train_trl(inputs: TrlInputs, out_dir: Path) -> Dict[str, Any]:
    """One TRL GRPOTrainer run of inputs.cfg: steps/s and the held-out accuracy curve."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL pings the Hub at start-up otherwise
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from transformers.utils import logging as hf_logging
    from trl import GRPOConfig, GRPOTrainer

    from ..rewards.scoring import Scorer
    from ..train.model import resolve_dtype
    from .bench_trl_eval import HeldOutAccuracy, StepClock, TaskReward

    cfg, task = inputs.cfg, inputs.task
    bf16 = resolve_dtype(cfg.model.dtype) == torch.bfloat16
    args = GRPOConfig(**grpo_config_kwargs(cfg, output_dir=str(out_dir), bf16=bf16))
    hf_logging.disable_progress_bar()  # the bench prints its own table; no loading bars in between
    model = AutoModelForCausalLM.from_pretrained(str(inputs.model_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(inputs.model_dir))
    dataset = Dataset.from_dict({"prompt": inputs.texts, "index": list(range(len(inputs.rows)))})
    with Scorer(task.reward_name) as scorer:
        clock = StepClock()  # first: its reading at a step's end comes before that step's evaluation
        held_out = HeldOutAccuracy(cfg, task, scorer, tokenizer)
        reward = TaskReward(task, inputs.rows, scorer)
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[reward],
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[clock, held_out],
        )
        trainer.remove_callback(PrinterCallback)  # it prints TRL's own end-of-training summary
        trainer.train()
    return {
        "steps_per_s": steps_per_second(clock.times),
        "eval_accuracy": held_out.curve,
        "train_reward": reward.means,
    }


def steps_per_second(times: Sequence[float]) -> float:
    """Steps per second between the first and the last step's end (chord's measure)."""
    if len(times) < 3:
        raise ValueError(f"steps/s needs at least 3 steps, got {len(times)}")
    return (len(times) - 1) / (times[-1] - times[0])
