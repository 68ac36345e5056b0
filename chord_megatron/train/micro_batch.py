"""What one Megatron micro-batch carries: the model's input on this rank, and the rows it trains.

The loss is always computed in the *rows'* layout ([n, S], as in the TrainBatch), so that
`algo.chord_loss` sees exactly what it would see for plain rows. The model's layout may differ:

* plain: the model reads the rows themselves ([b = n, L = S]); no token map.
* packed (train.pack_sequences): several rows share a model row of L tokens (train/packing.py),
  with a block-diagonal causal mask built from `segment_ids`.
* context parallel (parallel.context = CP > 1): each model row of length L is cut into 2 x CP
  chunks and this rank keeps two of them (train/cp_attention.py), L / CP positions.

`src` / `dst` relate the layouts: model token src[i] (flat index into this rank's [b, L / CP]
input) is row token dst[i] (flat index into [n, S]). Per-token log-probs and entropies, never
logits, are moved between layouts (`to_rows`): an index copy of b x L floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch

from ..types import TrainBatch
from .batching import dp_row_range, rows_per_rank, shard_for_rank
from .cp_attention import zigzag_positions
from .packing import plan_packs, trained_lengths


@dataclass
class MicroBatch:
    rows: TrainBatch  # the rows this micro-batch trains on, [n, S]
    row_ids: torch.Tensor  # [n] their index in the global batch; -1 for inert padding rows
    input_ids: torch.Tensor  # [b, L / CP] what the model reads on this rank
    labels: torch.Tensor  # [b, L / CP] the token predicted at each position (-1: none)
    seq_length: int  # L, the model rows' length before the context-parallel split
    segment_ids: Optional[torch.Tensor] = None  # [b, L] packed rows: which row each position holds (-1: filler)
    src: Optional[torch.Tensor] = None  # None: the model's layout is the rows' own
    dst: Optional[torch.Tensor] = None

    @property
    def micro_batch_size(self) -> int:
        return self.input_ids.shape[0]

    def to_rows(self, values: torch.Tensor) -> torch.Tensor:
        """Per-token `values` [b, L / CP] in the model's layout -> [n, S] in the rows' layout,
        0 where this rank holds no token (differentiable)."""
        if self.src is None:
            return values
        n, S = self.rows.input_ids.shape
        flat = values.reshape(-1).index_select(0, self.src.to(values.device))
        out = values.new_zeros(n * S).index_copy(0, self.dst.to(values.device), flat)
        return out.view(n, S)

    def present(self) -> Optional[torch.Tensor]:
        """[n, S] bool: the row tokens this rank computes (None: all of them)."""
        if self.src is None:
            return None
        n, S = self.rows.input_ids.shape
        mask = torch.zeros(n * S, dtype=torch.bool)
        mask[self.dst] = True
        return mask.view(n, S)


def round_up(n: int, multiple: int) -> int:
    return math.ceil(n / multiple) * multiple


def build_micro_batches(
    batch: TrainBatch,
    *,
    dp: int,
    dp_rank: int,
    micro_batch_size: int,
    cp: int = 1,
    cp_rank: int = 0,
    pack: bool = False,
    pack_length: int = 0,
    seq_multiple: int = 1,
) -> List[MicroBatch]:
    """This (data-, context-parallel) rank's micro-batches of the global `batch`.

    Unpacked: at most micro_batch_size rows per micro-batch, as few micro-batches as that
    allows, evenly filled (padded with inert rows to whole micro-batches, the same number on
    every DP rank). Packed: at most micro_batch_size model
    rows of `pack_length` tokens (0: the batch's S; widened to the longest row when that is
    longer) per micro-batch, as few micro-batches as that allows, evenly filled. Model rows are padded to a multiple of `seq_multiple` (2 x CP
    for context parallelism)."""
    block = dp_row_range(batch.rows, dp, dp_rank)
    if pack:
        return _packed(
            batch, block, micro_batch_size, pack_length or batch.input_ids.shape[1], cp, cp_rank, seq_multiple
        )
    ids = torch.full((rows_per_rank(batch.rows, dp, micro_batch_size),), -1, dtype=torch.long)
    ids[: block.stop - block.start] = torch.arange(block.start, block.stop)
    out = []
    for i, rows in enumerate(shard_for_rank(batch, dp=dp, dp_rank=dp_rank, micro_batch_size=micro_batch_size)):
        n, S = rows.input_ids.shape
        L = round_up(S, seq_multiple)
        row_index = torch.arange(n * S).view(n, S)
        out.append(
            _layout(
                rows,
                ids[i * n : (i + 1) * n],  # micro-batches are equally sized
                _pad(rows.input_ids, L, 0),
                _pad(rows.labels, L, -1),
                _pad(row_index, L, -1),
                None,
                cp,
                cp_rank,
            )
        )
    return out


def _packed(batch, block, mbs, capacity, cp, cp_rank, seq_multiple) -> List[MicroBatch]:
    local = batch.select(block)
    S = local.input_ids.shape[1]
    lengths = trained_lengths(local.loss_mask)
    # A row longer than pack_length gets a model row of its own; this step's model rows grow
    # to fit it (all micro-batches of a step share one shape, as pipeline stages need).
    capacity = max([capacity] + lengths)
    packs = plan_packs(lengths, capacity)
    L = round_up(capacity, seq_multiple)
    # As few micro-batches as micro_batch_size allows, with the packs spread evenly over them:
    # every micro-batch has the same shape, so a last, part-filled one would carry empty rows.
    n_groups = max(1, math.ceil(len(packs) / mbs))
    mbs = max(1, math.ceil(len(packs) / n_groups))
    groups = [packs[i * mbs : (i + 1) * mbs] for i in range(n_groups)]
    out = []
    for group in groups:
        members = [r for pack in group for r in pack]
        rows = local.select(torch.tensor(members, dtype=torch.long))
        ids = torch.zeros(mbs, L, dtype=local.input_ids.dtype)
        labels = torch.full((mbs, L), -1, dtype=local.labels.dtype)
        segment = torch.full((mbs, L), -1, dtype=torch.long)
        row_index = torch.full((mbs, L), -1, dtype=torch.long)
        j = 0  # index of the next member in `rows`
        for p, pack in enumerate(group):
            offset = 0
            for r in pack:
                n = lengths[r]
                span = slice(offset, offset + n)
                ids[p, span] = local.input_ids[r, :n]
                labels[p, span] = local.labels[r, :n]
                segment[p, span] = j
                row_index[p, span] = j * S + torch.arange(n)
                offset += n
                j += 1
        row_ids = torch.tensor(members, dtype=torch.long) + block.start
        out.append(_layout(rows, row_ids, ids, labels, row_index, segment, cp, cp_rank))
    return out


def _pad(t: torch.Tensor, length: int, value) -> torch.Tensor:
    if t.shape[1] == length:
        return t
    return torch.cat([t, t.new_full((t.shape[0], length - t.shape[1]), value)], dim=1)


def _layout(rows, row_ids, ids, labels, row_index, segment, cp, cp_rank) -> MicroBatch:
    """The MicroBatch whose model rows (whole length) are ids / labels; `row_index` [b, L] is
    the flat [n, S] index of the row token at each position (-1: none)."""
    b, L = ids.shape
    n, S = rows.input_ids.shape
    if cp > 1:
        keep = zigzag_positions(L, cp, cp_rank)
        ids, labels, row_index = ids[:, keep], labels[:, keep], row_index[:, keep]
    identity = cp == 1 and segment is None and (b, L) == (n, S)
    src = dst = None
    if not identity:
        flat = row_index.reshape(-1)
        src = torch.nonzero(flat >= 0).flatten()
        dst = flat[src]
    return MicroBatch(
        rows=rows, row_ids=row_ids, input_ids=ids, labels=labels, seq_length=L, segment_ids=segment, src=src, dst=dst
    )
