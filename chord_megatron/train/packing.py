"""Sequence packing: which rows share a model row, and the attention mask that keeps them apart.

Right-padded rows waste compute on padding; packing concatenates several rows into one model
row of `capacity` tokens. Each row contributes its tokens up to and including its last trained
token: later tokens cannot change any trained token's log-prob (attention is causal), so they
are dropped. Rows of one model row must not see each other: the mask is block-diagonal causal.
Positions need no reset: RoPE scores depend only on the distance between query and key, which
is the same inside a model row as in the row alone.
"""

from __future__ import annotations

from typing import List, Sequence

import torch


def trained_lengths(loss_mask: torch.Tensor) -> List[int]:
    """Per row: 1 + the index of its last trained token (0 for a row that trains nothing)."""
    mask = loss_mask.bool()
    S = mask.shape[1]
    last = torch.where(mask, torch.arange(S).expand_as(mask), torch.full_like(mask, -1, dtype=torch.long))
    return [int(v) + 1 for v in last.max(dim=1).values] if S else [0] * mask.shape[0]


def plan_packs(lengths: Sequence[int], capacity: int) -> List[List[int]]:
    """Group row indices into packs of at most `capacity` tokens: first fit, longest row first
    (ties by row index, so the plan is deterministic). Rows of length 0 are left out; the rows
    of a pack keep ascending index order. Raises ValueError naming the row that does not fit."""
    for i, n in enumerate(lengths):
        if n > capacity:
            raise ValueError(
                f"train.pack_length={capacity} is shorter than row {i}, which needs {n} tokens up to its last trained token"
            )
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: (-lengths[i], i))
    packs: List[List[int]] = []
    free: List[int] = []
    for i in order:
        for p, room in enumerate(free):
            if lengths[i] <= room:
                packs[p].append(i)
                free[p] -= lengths[i]
                break
        else:
            packs.append([i])
            free.append(capacity - lengths[i])
    return [sorted(p) for p in packs]


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[b, L] segment ids -> [b, 1, L, L] bool mask, True where a query may NOT attend a key
    (Megatron's convention): keys of another segment or later positions."""
    L = segment_ids.shape[1]
    pos = torch.arange(L, device=segment_ids.device)
    other = segment_ids[:, :, None] != segment_ids[:, None, :]
    future = pos[None, :] > pos[:, None]
    return (other | future)[:, None]


def cu_seqlens(segment_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative segment boundaries of the flattened [b, L] layout (every run of equal ids in
    a model row is one segment, fillers included), int32, as transformer-engine's THD wants."""
    starts = []
    b, L = segment_ids.shape
    for r in range(b):
        ids = segment_ids[r]
        change = torch.nonzero(ids[1:] != ids[:-1]).flatten() + 1
        starts.append(torch.cat([torch.zeros(1, dtype=torch.long, device=ids.device), change]) + r * L)
    ends = torch.tensor([b * L], device=segment_ids.device)
    return torch.cat(starts + [ends]).to(torch.int32)
