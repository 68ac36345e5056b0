"""Cut a global TrainBatch into this data-parallel rank's micro-batches, and count tokens.

Every data-parallel rank receives the same global batch and takes a contiguous block of rows;
the blocks are padded with inert rows (loss_mask 0) so that every rank runs the same number
of equally shaped micro-batches, which pipeline parallelism needs (stages exchange tensors of
a fixed [S, micro_batch, H] shape). Padding rows change no sum: the loss is normalised by
token counts of the *global* batch, computed here before any splitting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import torch

from ..types import TrainBatch


@dataclass(frozen=True)
class TokenCounts:
    """Loss tokens of the global batch, per row kind: the CHORD loss denominators."""

    rl: int
    sft: int

    def as_denominators(self) -> dict:
        return {"rl": float(self.rl), "sft": float(self.sft)}


def on_policy_mask(batch: TrainBatch) -> torch.Tensor:
    """[B, S] bool: the trained tokens of on-policy rows."""
    return batch.loss_mask.bool() & ~batch.is_expert.bool()[:, None]


def count_tokens(batch: TrainBatch) -> TokenCounts:
    """Response tokens of on-policy rows (rl) and of expert rows (sft) in the global `batch`
    (every rank holds all of it, so no communication is needed)."""
    rl = int(on_policy_mask(batch).sum())
    return TokenCounts(rl=rl, sft=int(batch.loss_mask.bool().sum()) - rl)


def dp_row_range(rows: int, dp: int, dp_rank: int) -> slice:
    """This rank's contiguous block of rows; blocks differ in size by at most one."""
    if rows < dp:
        raise ValueError(f"a batch of {rows} rows cannot feed {dp} data-parallel ranks")
    base, extra = divmod(rows, dp)
    start = dp_rank * base + min(dp_rank, extra)
    return slice(start, start + base + (1 if dp_rank < extra else 0))


def micro_batch_rows(rows: int, dp: int, micro_batch_size: int) -> int:
    """Rows per micro-batch this step: as few micro-batches of at most `micro_batch_size` rows
    as the largest rank block needs, evenly filled. A batch of 32 rows with micro_batch_size 64
    runs as one micro-batch of 32, not 64 with 32 inert rows: padding rows are computed in full
    (forward and backward), so every one of them is wasted time."""
    block = math.ceil(rows / dp)
    return math.ceil(block / math.ceil(block / micro_batch_size))


def rows_per_rank(rows: int, dp: int, micro_batch_size: int) -> int:
    """Padded rows per data-parallel rank: the largest block, rounded up to whole micro-batches
    of micro_batch_rows() rows."""
    each = micro_batch_rows(rows, dp, micro_batch_size)
    return math.ceil(math.ceil(rows / dp) / each) * each


def pad_rows(batch: TrainBatch, rows: int) -> TrainBatch:
    """`batch` followed by inert rows up to `rows`: on-policy kind, loss_mask 0, zeros elsewhere."""
    extra = rows - batch.rows
    if extra < 0:
        raise ValueError(f"cannot pad {batch.rows} rows down to {rows}")
    if extra == 0:
        return batch
    return batch.map(lambda t: torch.cat([t, t.new_zeros((extra,) + tuple(t.shape[1:]))]))


def micro_batches(batch: TrainBatch, micro_batch_size: int) -> List[TrainBatch]:
    """Consecutive slices of `micro_batch_size` rows (the row count must be a multiple)."""
    if batch.rows % micro_batch_size:
        raise ValueError(f"{batch.rows} rows do not split into micro-batches of {micro_batch_size}")
    return [batch.select(slice(i, i + micro_batch_size)) for i in range(0, batch.rows, micro_batch_size)]


def shard_for_rank(batch: TrainBatch, *, dp: int, dp_rank: int, micro_batch_size: int) -> List[TrainBatch]:
    """This data-parallel rank's padded micro-batches of the global `batch`."""
    local = batch.select(dp_row_range(batch.rows, dp, dp_rank))
    each = micro_batch_rows(batch.rows, dp, micro_batch_size)
    return micro_batches(pad_rows(local, rows_per_rank(batch.rows, dp, micro_batch_size)), each)


def check_batch(batch: TrainBatch) -> None:
    """Shapes and dtypes a step relies on; raises ValueError naming the field."""
    if batch.input_ids.dim() != 2:
        raise ValueError(f"TrainBatch.input_ids must be [B, S], got {tuple(batch.input_ids.shape)}")
    B, S = batch.input_ids.shape
    for name in ("labels", "loss_mask", "old_logp", "rollout_logp"):
        t = getattr(batch, name)
        if t is not None and tuple(t.shape) != (B, S):
            raise ValueError(f"TrainBatch.{name} must be [B, S] = {(B, S)}, got {tuple(t.shape)}")
    for name in ("is_expert", "advantages"):
        t = getattr(batch, name)
        if tuple(t.shape) != (B,):
            raise ValueError(f"TrainBatch.{name} must be [B] = {(B,)}, got {tuple(t.shape)}")
    if batch.input_ids.is_floating_point() or batch.labels.is_floating_point():
        raise ValueError("TrainBatch.input_ids and labels must hold integer token ids")
