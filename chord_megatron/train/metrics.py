"""Combine `algo.chord_loss` metrics over micro-batches, data-parallel and pipeline ranks.

chord_loss returns, per call, token-means over that call's own tokens plus the token counts.
A token-mean of the whole batch is the count-weighted mean of the per-micro-batch means, so
each metric travels as (mean x count) sums and is divided by the total count at the end.
The loss terms are different: they are already normalised by the *global* token counts, so
they simply add up.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import torch
import torch.distributed as dist

from ..metrics import table

# How each chord_loss metric combines (the metric table, metrics/table.py).
SUMMED = table.keys_reduced_by(table.SUM)
RL_MEANS = table.keys_reduced_by(table.RL_MEAN)
SFT_MEANS = table.keys_reduced_by(table.EXPERT_MEAN)
CONSTANT = table.keys_reduced_by(table.CONSTANT)  # the same in every call; reported as given


def metric_keys(chord_kwargs: Mapping) -> List[str]:
    """The keys chord_loss reports with these settings (found by calling it on one token),
    in a fixed order so that every rank lays out the same reduction vector."""
    from ..algo import chord_loss

    one = torch.zeros(1, 1)
    kwargs = dict(chord_kwargs)
    if kwargs.get("tis_cap") is not None:
        kwargs["rollout_logp"] = one
    _, metrics = chord_loss(
        one, one, torch.zeros(1), torch.ones(1, 1), torch.zeros(1, dtype=torch.bool), 0.0, entropy=one, **kwargs
    )
    keys = [k for k in metrics if k not in CONSTANT]
    unknown = [k for k in keys if k not in SUMMED + RL_MEANS + SFT_MEANS]
    if unknown:
        raise ValueError(f"metrics/table.py does not say how to combine chord_loss metric(s) {unknown}")
    return keys


def to_sums(metrics: Mapping[str, torch.Tensor], keys: Sequence[str]) -> torch.Tensor:
    """One micro-batch's metrics as a [len(keys)] fp32 vector of sums."""
    out = []
    for k in keys:
        v = metrics[k].detach().float()
        if k in RL_MEANS:
            v = v * metrics["rl_tokens"]
        elif k in SFT_MEANS:
            v = v * metrics["sft_tokens"]
        out.append(v.reshape(()))
    return torch.stack(out)


def from_sums(total: torch.Tensor, keys: Sequence[str]) -> Dict[str, float]:
    """Inverse of to_sums, applied to sums over all micro-batches and ranks."""
    values = dict(zip(keys, total.tolist()))
    rl = max(values["rl_tokens"], 1.0)
    sft = max(values["sft_tokens"], 1.0)
    for k in keys:
        if k in RL_MEANS:
            values[k] /= rl
        elif k in SFT_MEANS:
            values[k] /= sft
    return values


def reduce_step_metrics(
    per_microbatch: List[Mapping[str, torch.Tensor]],
    keys: Sequence[str],
    *,
    dp_cp_group: dist.ProcessGroup,
    pp_group: dist.ProcessGroup,
    is_last_stage: bool,
    device: torch.device,
) -> Dict[str, float]:
    """Metrics of the whole global batch, identical on every rank.

    `per_microbatch` is what the loss function returned for each micro-batch; only the last
    pipeline stage has any. Sums go over data/context-parallel ranks, then the last stage
    broadcasts the result to the other stages (the trainer's rank 0 is a first stage).
    """
    total = torch.zeros(len(keys), dtype=torch.float64, device=device)
    if is_last_stage:
        for m in per_microbatch:
            total += to_sums(m, keys).to(device=device, dtype=torch.float64)
    if dist.get_world_size(dp_cp_group) > 1:
        dist.all_reduce(total, group=dp_cp_group)
    if dist.get_world_size(pp_group) > 1:
        last = dist.get_global_rank(pp_group, dist.get_world_size(pp_group) - 1)
        dist.broadcast(total, src=last, group=pp_group)
    return from_sums(total.cpu(), keys)


def logprob_mismatch(trainer_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> Dict[str, float]:
    """Rollout engine vs trainer log-probs of the same tokens, over the masked (on-policy
    response) tokens. All tensors [B, S]; empty mask -> zeros.

    - mean / max |delta|: the familiar numbers; the max is dominated by a few rare tokens, where
      bf16 engines routinely disagree by 0.1-1 nats, so it makes a poor pass/fail statistic;
    - kl: the token-mean k3 estimate of KL(rollout || trainer), mean(exp(d) - 1 - d) with
      d = trainer - rollout (unbiased for tokens sampled by the engine, >= 0, ~ d^2 / 2):
      precision noise gives ~1e-4..1e-3, a wrong layer O(0.1) and more;
    - nonfinite: tokens where either side is NaN or inf (never an acceptable answer); the other
      statistics are taken over the finite tokens.
    """
    return mismatch_from_sums(mismatch_sums(trainer_logp, rollout_logp, mask))


# mismatch_sums' layout: four sums that add up over micro-batches and ranks, and one maximum.
_ABS, _K3, _FINITE, _NONFINITE, _MAX = range(5)


def mismatch_sums(trainer_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The parts of logprob_mismatch over one share of the tokens (a micro-batch on one rank),
    as a [5] fp64 vector: sum |d|, sum k3, finite count, non-finite count, max |d|. Shares
    combine with reduce_mismatch_sums; the training forward scores every on-policy token this
    way at no extra cost (train/step.py)."""
    m = mask.bool()
    delta = trainer_logp.detach().double()[m] - rollout_logp.double().to(trainer_logp.device)[m]
    finite = torch.isfinite(delta)
    d = delta[finite]
    out = torch.zeros(5, dtype=torch.float64, device=delta.device)
    out[_ABS] = d.abs().sum()
    out[_K3] = torch.expm1(d).sub(d).sum()
    out[_FINITE] = d.numel()
    out[_NONFINITE] = (~finite).sum()
    out[_MAX] = d.abs().max() if d.numel() else 0.0
    return out


def reduce_step_mismatch(
    parts: Sequence[torch.Tensor],
    *,
    dp_cp_group: dist.ProcessGroup,
    pp_group: dist.ProcessGroup,
    is_last_stage: bool,
    device: torch.device,
) -> Dict[str, float]:
    """logprob_mismatch of the whole global batch from the mismatch_sums of this rank's
    micro-batches (only the last pipeline stage has any), identical on every rank: sums and
    the maximum go over data/context-parallel ranks, then along the pipeline from its last stage."""
    total = torch.zeros(5, dtype=torch.float64, device=device)
    if is_last_stage:
        for part in parts:
            p = part.detach().to(device=device, dtype=torch.float64)
            total[:_MAX] += p[:_MAX]
            total[_MAX] = torch.maximum(total[_MAX], p[_MAX])
    if dist.get_world_size(dp_cp_group) > 1:
        sums, peak = total[:_MAX].contiguous(), total[_MAX:].contiguous()
        dist.all_reduce(sums, group=dp_cp_group)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=dp_cp_group)
        total = torch.cat([sums, peak])
    if dist.get_world_size(pp_group) > 1:
        last = dist.get_global_rank(pp_group, dist.get_world_size(pp_group) - 1)
        dist.broadcast(total, src=last, group=pp_group)
    return mismatch_from_sums(total.cpu())


def mismatch_from_sums(total: torch.Tensor) -> Dict[str, float]:
    """logprob_mismatch's dictionary from (reduced) mismatch_sums."""
    n = float(total[_FINITE])
    return {
        "logp_mismatch_mean": float(total[_ABS]) / n if n else 0.0,
        "logp_mismatch_max": float(total[_MAX]),
        "logp_mismatch_kl": float(total[_K3]) / n if n else 0.0,
        "logp_mismatch_tokens": n + float(total[_NONFINITE]),
        "logp_mismatch_nonfinite": float(total[_NONFINITE]),
    }
