"""`chord bench train-step CONFIG`: time one CHORD training step of a config on random data.

The batch has the config's shapes: prompts_per_step x samples_per_prompt on-policy rows plus
the expert rows that algorithm.expert_data_ratio implies, each data.max_prompt_tokens +
rollout.max_new_tokens long (capped at model.max_seq_length), trained on the response part.
Old log-probs come with the batch (as from a rollout engine), so a step is exactly one
forward/backward pass over the batch plus the optimizer update.
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any, Dict

import torch

from ..config import Config, load_config
from ..data.batch import mixed_step_rows
from ..types import TrainBatch


def run(args: argparse.Namespace) -> int:
    """`chord bench train-step`: the table of one config, or of two and their ratios (--vs)."""
    cfg = load_config(args.config, args.overrides)
    if not args.vs:
        _print_table(bench_train_step(cfg, steps=args.steps))
        return 0
    variant = load_config(args.config, list(args.overrides) + list(args.vs))
    result = compare_train_step(cfg, variant, steps=args.steps)
    for part in ("baseline", "variant"):
        print(f"--- {part}{'' if part == 'baseline' else ': ' + ' '.join(args.vs)}")
        _print_table(result[part])
    print("--- variant / baseline")
    _print_table(result["ratios"], ratios=True)
    return 0


def _print_table(result, *, ratios: bool = False) -> None:
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {format_value(key, value, ratio=ratios)}")


# the unit a key's suffix stands for (the keys are what bench_train_step returns)
_UNITS = (("tokens_per_s", "tokens/s"), ("_s", "s"), ("_mb", "MiB"))


def format_value(key: str, value: Any, *, ratio: bool = False) -> str:
    """A number as a reader takes it in: 4 significant digits and its unit ("0.1234 s",
    "12070 tokens/s", "1.032x"); lists of numbers alike; anything else as it is."""
    unit = "x" if ratio else next((u for suffix, u in _UNITS if key.endswith(suffix)), "")
    sep = "" if unit == "x" else " "

    def number(v: Any) -> str:
        if not isinstance(v, float):
            return str(v)
        rounded = float(f"{v:.4g}")
        return f"{rounded:.0f}" if 1e4 <= abs(rounded) < 1e12 else f"{v:.4g}"  # 12070, not 1.207e+04

    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return ", ".join(number(v) for v in value) + (sep + unit if unit else "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number(value) + (sep + unit if unit else "")
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def bench_shapes(cfg: Config) -> Dict[str, int]:
    """Rows (on-policy, expert) and sequence length of the benchmark batch."""
    rl_rows, expert_rows = mixed_step_rows(cfg)
    seq = min(cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens, cfg.model.max_seq_length)
    return {"rl_rows": rl_rows, "expert_rows": expert_rows, "seq_length": seq}


def random_batch(cfg: Config, seed: int = 0) -> TrainBatch:
    """A TrainBatch of the benchmark shapes with random tokens, advantages and old log-probs.
    Response lengths vary as sampled ones do (uniform between a quarter of the budget and all
    of it), so that right-padding and sequence packing cost what they would in a run."""
    shapes = bench_shapes(cfg)
    rows, S = shapes["rl_rows"] + shapes["expert_rows"], shapes["seq_length"]
    prompt = min(cfg.data.max_prompt_tokens, S - 1)
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, cfg.model.vocab_size, (rows, S), generator=g)
    budget = S - prompt
    lengths = torch.randint(max(1, budget // 4), budget + 1, (rows,), generator=g)
    loss_mask = torch.zeros(rows, S)
    for r, n in enumerate(lengths.tolist()):
        loss_mask[r, prompt - 1 : prompt - 1 + n] = 1.0  # labels are input_ids shifted left by one
    is_expert = torch.arange(rows) >= shapes["rl_rows"]
    return TrainBatch(
        input_ids=input_ids,
        labels=torch.roll(input_ids, -1, dims=1),
        loss_mask=loss_mask,
        is_expert=is_expert,
        advantages=torch.randn(rows, generator=g) * (~is_expert),
        old_logp=-torch.rand(rows, S, generator=g) * 5.0,
    )


def _peak_memory_mb() -> Dict[str, Any]:
    if torch.cuda.is_available():
        return {"peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20, "memory_kind": "cuda_max_allocated"}
    # ru_maxrss is in KiB on Linux: the process's peak resident set since it started.
    return {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "memory_kind": "cpu_peak_rss"}


def bench_train_step(cfg: Config, steps: int = 3) -> Dict[str, Any]:
    """Build the engine for `cfg` (joining torchrun's world, or a world of one), run one
    untimed warm-up step, then `steps` timed steps. Returns tokens/s (all B x S positions, and
    trained tokens only), mean and per-step seconds, peak memory, and the shapes and layout.
    Runs on every rank of the job; the numbers are rank 0's view (steps end in collectives,
    so all ranks take the same time)."""
    from ..train.engine import MegatronEngine

    if steps < 1:
        raise ValueError(f"bench_train_step: steps must be >= 1, got {steps}")
    engine = MegatronEngine(cfg)
    batch = random_batch(cfg, seed=cfg.train.seed)
    warmup = engine.train_step(batch, 0)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        engine.train_step(batch, step)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    mean = sum(times) / len(times)
    tokens = batch.input_ids.numel()
    trained = int(batch.loss_mask.sum())
    par = engine.par
    return {
        "tokens_per_s": tokens / mean,
        "trained_tokens_per_s": trained / mean,
        "step_time_s": mean,
        "step_times_s": times,
        **_peak_memory_mb(),
        "rows": batch.rows,
        "seq_length": batch.input_ids.shape[1],
        "tokens_per_step": tokens,
        "layout": {"world": par.world_size, "tp": par.tp, "pp": par.pp, "vpp": par.vpp, "cp": par.cp, "dp": par.dp},
        "packed": cfg.train.pack_sequences,
        "micro_batches": int(warmup["micro_batches"]),
        "device": str(par.device),
        "dtype": str(engine.model[0].config.params_dtype).replace("torch.", ""),
    }


def compare_train_step(baseline: Config, variant: Config, steps: int = 3) -> Dict[str, Any]:
    """bench_train_step of `baseline` and `variant` in the same run, in the order baseline,
    variant, variant, baseline: whichever runs later in a process runs on a warmer (or more
    fragmented) allocator, and this order cancels that. Returns each config's merged result
    and the variant / baseline ratios: step time, trained tokens/s, and peak memory where it
    is measured per run (CUDA; the CPU's peak RSS covers the whole process)."""
    runs = [bench_train_step(cfg, steps) for cfg in (baseline, variant, variant, baseline)]
    base, var = _merge([runs[0], runs[3]]), _merge([runs[1], runs[2]])
    ratios = {
        "step_time": var["step_time_s"] / base["step_time_s"],
        "trained_tokens_per_s": var["trained_tokens_per_s"] / base["trained_tokens_per_s"],
    }
    if base["memory_kind"] == "cuda_max_allocated":
        ratios["peak_memory"] = var["peak_memory_mb"] / base["peak_memory_mb"]
    return {"baseline": base, "variant": var, "ratios": ratios}


def _merge(runs) -> Dict[str, Any]:
    """Runs of one config as one result: all step times, their mean, the highest peak."""
    out = dict(runs[0])
    out["step_times_s"] = [t for r in runs for t in r["step_times_s"]]
    out["step_time_s"] = sum(out["step_times_s"]) / len(out["step_times_s"])
    out["tokens_per_s"] = out["tokens_per_step"] / out["step_time_s"]
    out["trained_tokens_per_s"] = runs[0]["trained_tokens_per_s"] * runs[0]["step_time_s"] / out["step_time_s"]
    out["peak_memory_mb"] = max(r["peak_memory_mb"] for r in runs)
    return out
