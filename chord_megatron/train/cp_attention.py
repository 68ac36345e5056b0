"""Context parallelism for Megatron's local (torch) layer spec: all-gather-KV attention.

megatron-core supports context parallelism (CP) everywhere except in its local attention:
RoPE keeps the position chunks of each CP rank (`get_pos_emb_on_this_cp_rank`), DDP reduces
gradients over data- x context-parallel ranks, the pipeline schedules divide the sequence by
the CP size; only `DotProductAttention` asserts CP = 1 ("only supported by
TEDotProductAttention"). On GPUs transformer-engine's attention does CP (ring exchange of K/V).
Without it (CPU, CI), this module stands in so that CP runs and is tested:

* Layout (the same as Megatron-LM's `get_batch_on_this_cp_rank` and RoPE): a sequence of length
  L is cut into 2 x CP equal chunks; CP rank r holds chunks r and 2 x CP - 1 - r, so that every
  rank gets the same amount of causal attention work ("zigzag" load balancing).
* Attention: each rank all-gathers K and V of the whole sequence (autograd: the backward sums
  the K/V gradients over CP ranks and keeps its own chunks), then its queries attend causally
  by *global* position, through DotProductAttention's own matmul / masked softmax code.

All-gathering K/V costs O(L) memory per rank instead of a ring's O(L / CP): fine for the CPU
path it exists for; GPU runs use transformer-engine.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from megatron.core.transformer.dot_product_attention import DotProductAttention

from .compat.cp_config import without_context_parallelism


def zigzag_positions(length: int, cp: int, cp_rank: int, device=None) -> torch.Tensor:
    """The positions of a length-`length` sequence that CP rank `cp_rank` holds, in order:
    chunk cp_rank, then chunk 2 * cp - 1 - cp_rank, of 2 * cp equal chunks."""
    if length % (2 * cp):
        raise ValueError(
            f"context parallelism over {cp} ranks needs a sequence length divisible by {2 * cp}, got {length}"
        )
    c = length // (2 * cp)
    first = torch.arange(cp_rank * c, (cp_rank + 1) * c, device=device)
    second = torch.arange((2 * cp - 1 - cp_rank) * c, (2 * cp - cp_rank) * c, device=device)
    return torch.cat([first, second])


class _GatherSequence(torch.autograd.Function):
    """[L / CP, ...] zigzag-local -> [L, ...] in natural order; backward: sum over CP, keep own."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        cp, rank = dist.get_world_size(group), dist.get_rank(group)
        ctx.group, ctx.cp, ctx.rank = group, cp, rank
        pieces = [torch.empty_like(local) for _ in range(cp)]
        dist.all_gather(pieces, local.contiguous(), group=group)
        chunks = [None] * (2 * cp)
        for r, piece in enumerate(pieces):
            chunks[r], chunks[2 * cp - 1 - r] = piece.chunk(2, dim=0)
        return torch.cat(chunks, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # gloo has no reduce-scatter: all-reduce the (small, per-layer K/V) gradient instead.
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        idx = zigzag_positions(grad.shape[0], ctx.cp, ctx.rank, device=grad.device)
        return grad.index_select(0, idx), None


def gather_sequence(local: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _GatherSequence.apply(local, group)


class ContextParallelDotProductAttention(DotProductAttention):
    """Megatron's local DotProductAttention with context parallelism (see the module doc).

    `attention_mask` is None (causal) or the boolean mask of the *whole* sequence
    [b, 1, L, L] (True = blocked), e.g. the block-diagonal mask of packed rows; each rank uses
    the rows of its own queries."""

    def __init__(self, config, *args, pg_collection=None, **kwargs):
        self.cp_group = pg_collection.cp if pg_collection is not None else None
        if self.cp_group is None:
            from megatron.core import parallel_state

            self.cp_group = parallel_state.get_context_parallel_group()
        # The parent refuses CP > 1 and otherwise reads only sizes from the config.
        super().__init__(without_context_parallelism(config), *args, pg_collection=pg_collection, **kwargs)
        if self.config.window_size is not None:
            raise ValueError("context parallelism on the local spec does not support sliding-window attention")

    def forward(
        self,
        query,
        key,
        value,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params=None,
    ):
        if packed_seq_params is not None:
            raise ValueError("ContextParallelDotProductAttention takes packed rows as a dense attention_mask, not THD")
        cp = dist.get_world_size(self.cp_group)
        key = gather_sequence(key, self.cp_group)
        value = gather_sequence(value, self.cp_group)
        L = key.shape[0]
        q_pos = zigzag_positions(L, cp, dist.get_rank(self.cp_group), device=query.device)
        if attention_mask is None:
            k_pos = torch.arange(L, device=query.device)
            mask = (k_pos[None, :] > q_pos[:, None])[None, None]
        else:
            if attention_mask.shape[-2:] != (L, L):
                raise ValueError(
                    f"attention_mask must cover the whole sequence [.., {L}, {L}], got {tuple(attention_mask.shape)}"
                )
            mask = attention_mask.index_select(-2, q_pos)
        return super().forward(query, key, value, mask, attn_mask_type, attention_bias, None)
