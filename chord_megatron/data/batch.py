"""Assemble a TrainBatch from on-policy rollouts and expert rows (pure torch, no I/O).

A row is prompt + response. Following Megatron, input_ids[t] is fed and labels[t] = the next
token, so response token j sits at label position len(prompt) - 1 + j; loss_mask marks those
positions, and the engine's sampled-token log-probs go to the same places in rollout_logp.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from ..types import Rollout, TrainBatch
from .jsonl import ExpertRow


def build_train_batch(
    rollouts: Sequence[Rollout],
    advantages: torch.Tensor,
    expert_rows: Sequence[ExpertRow],
    *,
    pad_id: int,
    seq_length: Optional[int] = None,
) -> TrainBatch:
    """On-policy rows first (in `rollouts` order, with their `advantages` [len(rollouts)]),
    then expert rows. Rows are right-padded to `seq_length` (default: the longest row - 1);
    a row longer than `seq_length` + 1 is an error, since cutting it would train on a fragment."""
    if advantages.shape != (len(rollouts),):
        raise ValueError(
            f"build_train_batch: {len(rollouts)} rollouts but advantages of shape {tuple(advantages.shape)}"
        )
    rows: List[tuple] = []  # (prompt ids, response ids, response logprobs or None)
    for r in rollouts:
        if len(r.logprobs) != len(r.response_ids):
            raise ValueError(
                f"build_train_batch: rollout {r.prompt_index}/{r.sample_index} has {len(r.response_ids)} tokens "
                f"but {len(r.logprobs)} log-probs"
            )
        rows.append((r.prompt_ids, r.response_ids, r.logprobs))
    for e in expert_rows:
        rows.append((e.prompt_ids, e.response_ids, None))
    if not rows:
        raise ValueError("build_train_batch: no rows")
    for p, resp, _ in rows:
        if not p:
            raise ValueError("build_train_batch: a row has an empty prompt (nothing to condition on)")
    longest = max(len(p) + len(resp) for p, resp, _ in rows) - 1
    S = seq_length if seq_length is not None else longest
    if longest > S:
        raise ValueError(f"build_train_batch: a row needs {longest + 1} tokens, more than seq_length + 1 = {S + 1}")

    B = len(rows)
    input_ids = torch.full((B, S), pad_id, dtype=torch.long)
    labels = torch.full((B, S), pad_id, dtype=torch.long)
    loss_mask = torch.zeros(B, S)
    rollout_logp = torch.zeros(B, S)
    for i, (p, resp, lps) in enumerate(rows):
        seq = torch.tensor(list(p) + list(resp), dtype=torch.long)
        n = seq.numel() - 1
        input_ids[i, :n] = seq[:-1]
        labels[i, :n] = seq[1:]
        start = len(p) - 1
        loss_mask[i, start : start + len(resp)] = 1.0
        if lps is not None:
            rollout_logp[i, start : start + len(resp)] = torch.tensor(lps, dtype=torch.float32)
    is_expert = torch.zeros(B, dtype=torch.bool)
    is_expert[len(rollouts) :] = True
    adv = torch.zeros(B)
    adv[: len(rollouts)] = advantages.float()
    return TrainBatch(
        input_ids=input_ids,
        labels=labels,
        loss_mask=loss_mask,
        is_expert=is_expert,
        advantages=adv,
        old_logp=None,
        rollout_logp=rollout_logp if rollouts else None,
    )


def expert_rows_per_step(on_policy_rows: int, expert_data_ratio: float, *, pure_sft_rows: int) -> int:
    """How many expert rows join `on_policy_rows` so that they make up `expert_data_ratio` of the
    batch (the paper's math setting: 0.2 -> 64 expert rows with 32 prompts x 8 samples).
    With a ratio of 1 there are no on-policy rows and `pure_sft_rows` sets the batch size."""
    if not 0.0 <= expert_data_ratio <= 1.0:
        raise ValueError(f"expert_data_ratio must be in [0, 1], got {expert_data_ratio}")
    if expert_data_ratio == 1.0:
        return pure_sft_rows
    return round(on_policy_rows * expert_data_ratio / (1.0 - expert_data_ratio))


def mixed_step_rows(cfg) -> Tuple[int, int]:
    """(on-policy rows, expert rows) of a step of `cfg` that mixes both (the most rows a step
    has): prompts_per_step x samples_per_prompt rollouts plus the expert rows the ratio adds;
    with a ratio of 1, a full batch of expert rows and no rollouts."""
    rl = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    ratio = cfg.algorithm.expert_data_ratio
    if ratio >= 1.0:
        return 0, rl
    return rl, expert_rows_per_step(rl, ratio, pure_sft_rows=rl)
