"""Every metric a run logs, once: its name, how it is combined, what it is logged as, which
row kind it needs, and whether the report plots it.

The engine's reduction over micro-batches and ranks (train/metrics.py), the renaming of the
engine's keys to the names in metrics.jsonl, the drop of token-means over a row kind a step
does not have, and the report's curves (metrics/report.py) all read this table. A key the
table does not know raises instead of vanishing from the logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

# How a metric of the engine is combined over micro-batches and data/context-parallel ranks.
SUM = "sum"  # the loss terms (already divided by global token counts) and the token counts
RL_MEAN = "rl_mean"  # a token-mean over on-policy tokens: weighted by each call's rl_tokens
EXPERT_MEAN = "expert_mean"  # a token-mean over expert tokens: weighted by sft_tokens
CONSTANT = "constant"  # the same in every call (mu)
WHOLE_BATCH = "whole_batch"  # computed once per step by the engine for the whole batch
LOOP = "loop"  # measured by the driver (rollouts, rewards, sync, evaluation), not the engine

# The row kind without which a token-mean means nothing (the step has no such tokens).
RL, EXPERT = "rl", "expert"


@dataclass(frozen=True)
class Metric:
    key: str  # the engine's key (chord_loss's or the engine's own); for LOOP metrics the logged name
    logged: str  # the name in metrics.jsonl and TensorBoard
    reduction: str
    needs: Optional[str] = None  # RL / EXPERT: dropped from a step without rows of that kind
    curve: Optional[str] = None  # the title of its panel in the report's curves
    panel: int = 0  # the panel's position among the curves


METRICS: Tuple[Metric, ...] = (
    # chord_loss (algo/losses.py)
    Metric("loss", "loss/total", SUM),
    Metric("grpo_loss", "loss/grpo", SUM, needs=RL),
    Metric("sft_loss", "loss/sft", SUM, needs=EXPERT),
    Metric("rl_tokens", "tokens/rl", SUM),
    Metric("sft_tokens", "tokens/expert", SUM),
    Metric("clip_frac", "clip/frac", RL_MEAN, needs=RL),
    Metric("dual_clip_frac", "clip/dual_frac", RL_MEAN, needs=RL),
    Metric("approx_kl", "kl/approx", RL_MEAN, needs=RL),
    Metric("ratio_mean", "ratio/mean", RL_MEAN, needs=RL),
    Metric("entropy_rl", "entropy/rl", RL_MEAN, needs=RL, curve="entropy on on-policy tokens", panel=3),
    Metric("tis_weight_mean", "tis/weight_mean", RL_MEAN, needs=RL),
    Metric("sft_nll", "sft/nll", EXPERT_MEAN, needs=EXPERT),
    Metric("phi_mean", "phi/mean", EXPERT_MEAN, needs=EXPERT),
    Metric("entropy_sft", "entropy/expert", EXPERT_MEAN, needs=EXPERT, curve="entropy on expert tokens", panel=4),
    Metric("mu", "mu", CONSTANT, curve="mu", panel=6),
    # the engine's own (train/engine.py)
    Metric("grad_norm", "grad_norm", WHOLE_BATCH),
    Metric("lr", "lr", WHOLE_BATCH),
    Metric("update_successful", "train/update_successful", WHOLE_BATCH),
    Metric("micro_batches", "train/micro_batches", WHOLE_BATCH),
    Metric("padding_frac", "train/padding_frac", WHOLE_BATCH),
    Metric("logp_mismatch_mean", "mismatch/mean", WHOLE_BATCH),
    Metric("logp_mismatch_max", "mismatch/max", WHOLE_BATCH),
    Metric("logp_mismatch_kl", "mismatch/kl", WHOLE_BATCH),
    Metric("logp_mismatch_nonfinite", "mismatch/nonfinite", WHOLE_BATCH),
    Metric("logp_mismatch_tokens", "mismatch/tokens", WHOLE_BATCH),
    # the driver's (loop.py, weight_sync/verified.py)
    Metric("rollout/seconds", "rollout/seconds", LOOP),  # generation
    Metric("reward/seconds", "reward/seconds", LOOP),
    Metric("rollout/wait_seconds", "rollout/wait_seconds", LOOP),  # asynchronous: waiting for the next batch
    Metric("old_logp/seconds", "old_logp/seconds", LOOP),  # train.recompute_old_logp's pass
    Metric("update/seconds", "update/seconds", LOOP),  # forward, backward, optimizer
    Metric("sync/probe_seconds", "sync/probe_seconds", LOOP),
    Metric("clock/seconds", "clock/seconds", LOOP),  # since the loop began, when the record was made
    Metric("rollout/tokens_per_s", "rollout/tokens_per_s", LOOP),
    Metric("reward/mean", "reward/mean", LOOP, curve="training reward", panel=2),
    Metric("reward/accuracy", "reward/accuracy", LOOP),
    Metric("response/length", "response/length", LOOP, curve="response length (tokens)", panel=5),
    Metric("response/truncated", "response/truncated", LOOP),
    Metric("sync/seconds", "sync/seconds", LOOP),
    Metric("sync/bytes_per_s", "sync/bytes_per_s", LOOP),
    Metric("sync/verify_kl", "sync/verify_kl", LOOP),
    Metric("sync/verify_max_gap", "sync/verify_max_gap", LOOP),
    Metric("step/seconds", "step/seconds", LOOP),
    Metric("train/tokens_per_s", "train/tokens_per_s", LOOP),
    Metric("eval/accuracy", "eval/accuracy", LOOP, curve="held-out accuracy (avg@k)", panel=1),
    Metric("eval/reward", "eval/reward", LOOP),
    Metric("eval/response_length", "eval/response_length", LOOP),
)
ENGINE: Dict[str, Metric] = {m.key: m for m in METRICS if m.reduction != LOOP}


def keys_reduced_by(reduction: str) -> Tuple[str, ...]:
    return tuple(m.key for m in METRICS if m.reduction == reduction)


# (logged name, panel title) of the report's curves, in panel order.
CURVES: Tuple[Tuple[str, str], ...] = tuple(
    (m.logged, m.curve) for m in sorted((m for m in METRICS if m.curve), key=lambda m: m.panel)
)


def logged(engine_metrics: Mapping[str, float]) -> Dict[str, float]:
    """The engine's metrics of one step under their logged names, without the token-means over
    a row kind the step did not have. A key not in the table raises."""
    unknown = sorted(k for k in engine_metrics if k not in ENGINE)
    if unknown:
        raise KeyError(f"metric(s) {unknown} are not in chord_megatron/metrics/table.py: add them there")
    has = {RL: bool(engine_metrics.get("rl_tokens")), EXPERT: bool(engine_metrics.get("sft_tokens"))}
    return {ENGINE[k].logged: v for k, v in engine_metrics.items() if ENGINE[k].needs is None or has[ENGINE[k].needs]}
