"""Reference implementation: the parity oracle for the Triton and chunked paths.

Deliberately naive so that it is obviously right: with a TP group it all-gathers the vocabulary
shards into the full [N, V] logits (and slices the gradient back out), then runs plain
`log_softmax`, `gather` and `-(p * log p).sum()` under torch autograd. It shares no code with the
fast paths. Memory: several fp32 [N, V] tensors -- not for production use.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist


def _gather_shards(shard: torch.Tensor, vocab_start: int, group) -> torch.Tensor:
    """All-gather [N, V_r] shards of possibly different widths into the full [N, V] tensor.

    Each rank's columns land at its own vocab_start, so uneven shards and any rank order work;
    the shards must tile [0, V) exactly, which is checked.
    """
    world = dist.get_world_size(group)
    meta = torch.tensor([vocab_start, shard.shape[1]], dtype=torch.int64, device=shard.device)
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta, group=group)
    spans = sorted((int(m[0]), int(m[1])) for m in metas)
    expected = 0
    for start, width in spans:
        if start != expected:
            raise ValueError(f"vocabulary shards do not tile [0, V): {spans}")
        expected = start + width
    widest = max(width for _, width in spans)
    padded = shard.new_zeros((shard.shape[0], widest))
    padded[:, : shard.shape[1]] = shard
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded.contiguous(), group=group)
    full = shard.new_empty((shard.shape[0], expected))
    for m, piece in zip(metas, pieces):
        start, width = int(m[0]), int(m[1])
        full[:, start : start + width] = piece[:, :width]
    return full


class _GatherVocab(torch.autograd.Function):
    """Shard [N, V_local] -> full [N, V]; backward keeps this rank's columns of the gradient.

    Every rank then computes the same loss on the same full tensor, so the slice of the full
    gradient is exactly this shard's gradient (no reduction needed).
    """

    @staticmethod
    def forward(ctx, shard, vocab_start, group):
        ctx.span = (vocab_start, shard.shape[1])
        return _gather_shards(shard, vocab_start, group)

    @staticmethod
    def backward(ctx, grad_full):
        start, width = ctx.span
        return grad_full[:, start : start + width], None, None


def reference_vocab_parallel_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    vocab_start: int,
    temperature: float = 1.0,
    tp_group: Optional[dist.ProcessGroup] = None,
    with_entropy: bool = True,
    inplace_backward: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Same contract as `chord_kernels.vocab_parallel_logprobs` (inplace_backward is ignored).

    logits [..., V_local] (any float dtype), targets [...] (global ids) -> logp, entropy fp32 [...].
    Without a group the shard is the whole vocabulary, placed at vocab_start. Targets outside the
    global vocabulary get logp = 0 and no log-prob gradient.
    """
    del inplace_backward  # the oracle never overwrites its input
    lead = targets.shape
    x = logits.reshape(-1, logits.shape[-1])
    t = targets.reshape(-1)
    if tp_group is None:
        full, offset = x, vocab_start
    else:
        full, offset = _GatherVocab.apply(x, vocab_start, tp_group), 0
    logp_all = torch.log_softmax(full.float() / temperature, dim=-1)
    col = t - offset
    valid = (col >= 0) & (col < full.shape[1])
    picked = logp_all.gather(1, torch.where(valid, col, 0).unsqueeze(1)).squeeze(1)
    logp = torch.where(valid, picked, torch.zeros_like(picked))
    entropy = -(logp_all.exp() * logp_all).sum(dim=-1) if with_entropy else None
    return logp.view(lead), (entropy.view(lead) if entropy is not None else None)
