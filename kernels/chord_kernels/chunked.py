"""Chunked torch implementation of vocabulary-parallel log p(target) and entropy (the CPU fast path).

Same math and the same TP communication as the Triton kernel (see combine.py), written as a
handful of full-width torch ops over `chunk_rows` rows at a time:
  * extra memory is two fp32 [chunk_rows, V_local] work buffers, reused for every chunk, plus a
    few fp32 [N] vectors -- never an N x V temporary (on CPU, fresh allocations of tens of MiB
    cost more in page faults than the arithmetic);
  * backward recomputes the softmax chunk by chunk from the logits instead of saving it, and can
    write the gradient over the logits buffer (`inplace_backward=True`);
  * each op is a single pass over a chunk that still sits in cache; `torch.add(..., alpha=)` and
    `addcmul` fold the temperature scaling and per-row shifts into passes we make anyway
    (forward: max, shift, exp, sum, multiply-and-sum; backward: shift, exp, affine, multiply).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from .combine import ShardPartials, backward_inputs, finish_forward, owned_mask

DEFAULT_CHUNK_ROWS = 32


def _target_index(targets: torch.Tensor, vocab_start: int, v_local: int):
    """(local column clamped into range, owned mask) for global target ids."""
    owned = owned_mask(targets, vocab_start, v_local)
    local = torch.where(owned, targets - vocab_start, torch.zeros_like(targets))
    return local, owned


def chunked_shard_partials(
    logits: torch.Tensor,
    targets: torch.Tensor,
    vocab_start: int,
    temperature: float,
    with_entropy: bool,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> ShardPartials:
    """Per-row partials of a [N, V_local] shard (any float dtype); returns fp32 [N] tensors."""
    n, v_local = logits.shape
    inv_t = 1.0 / temperature
    row_max = torch.empty(n, dtype=torch.float32, device=logits.device)
    sum_exp = torch.empty_like(row_max)
    sum_exp_dz = torch.zeros_like(row_max)
    work_dz = logits.new_empty((min(chunk_rows, n), v_local), dtype=torch.float32)
    work_e = torch.empty_like(work_dz)
    for r0 in range(0, n, chunk_rows):
        r1 = min(r0 + chunk_rows, n)
        x = logits[r0:r1]
        dz, e = work_dz[: r1 - r0], work_e[: r1 - r0]
        # max(x / T) = max(x) / T for T > 0; the max is exact in the input dtype.
        m = x.amax(dim=1).float() * inv_t
        torch.add(-m.unsqueeze(1), x, alpha=inv_t, out=dz)  # dz = x/T - m, computed in fp32
        torch.exp(dz, out=e)
        row_max[r0:r1] = m
        sum_exp[r0:r1] = e.sum(dim=1)
        if with_entropy:
            # In place: e is no longer needed. (bmm as a row-wise dot was 7x slower on CPU.)
            sum_exp_dz[r0:r1] = e.mul_(dz).sum(dim=1)
    local, owned = _target_index(targets, vocab_start, v_local)
    target_z = logits.gather(1, local.unsqueeze(1)).squeeze(1).float() * inv_t
    target_z = torch.where(owned, target_z, torch.zeros_like(target_z))
    return ShardPartials(row_max, sum_exp, sum_exp_dz, target_z)


def chunked_shard_grad(
    logits: torch.Tensor,
    targets: torch.Tensor,
    row_max: torch.Tensor,
    log_sum: torch.Tensor,
    entropy: Optional[torch.Tensor],
    g_logp: torch.Tensor,
    g_ent: Optional[torch.Tensor],
    vocab_start: int,
    temperature: float,
    out: torch.Tensor,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> torch.Tensor:
    """Gradient of sum(g_logp * logp + g_ent * H) w.r.t. the shard, written into `out`.

    With z = x/T, d_j = z_j - M (global max), S = sum exp(d), p_j = e^(d_j) / S,
    log p_j = d_j - log S:
      dL/dx_j = (g_logp (1[j=t] - p_j) - g_ent p_j (log p_j + H)) / T
              = e^(d_j) * (a d_j + b) + 1[j=t] g_logp / T,
      a = -g_ent / (T S),   b = -(g_logp + g_ent (H - log S)) / (T S).
    Folding 1/S and log S into the per-row a, b keeps it at four passes per chunk and never
    forms M + log S (whose rounding is ~3e-5 for logits ~1e3).
    `out` may be `logits` itself: a chunk is fully read before it is overwritten. All [N] inputs
    are fp32; g_logp must already be 0 for invalid targets.
    """
    n, v_local = logits.shape
    inv_t = 1.0 / temperature
    work_d = logits.new_empty((min(chunk_rows, n), v_local), dtype=torch.float32)
    work_e = torch.empty_like(work_d)
    local, owned = _target_index(targets, vocab_start, v_local)
    onehot_grad = torch.where(owned, g_logp * inv_t, torch.zeros_like(g_logp))
    scale = inv_t * torch.exp(-log_sum)  # 1 / (T S)
    if g_ent is None:
        slope, offset = None, -g_logp * scale
    else:
        slope, offset = -g_ent * scale, -(g_logp + g_ent * (entropy - log_sum)) * scale
    direct = out.dtype == torch.float32
    for r0 in range(0, n, chunk_rows):
        r1 = min(r0 + chunk_rows, n)
        d, e = work_d[: r1 - r0], work_e[: r1 - r0]
        torch.add(-row_max[r0:r1].unsqueeze(1), logits[r0:r1], alpha=inv_t, out=d)  # d = z - M
        torch.exp(d, out=e)
        if slope is None:
            d.copy_(offset[r0:r1].unsqueeze(1).expand_as(d))
        else:
            torch.addcmul(offset[r0:r1].unsqueeze(1), d, slope[r0:r1].unsqueeze(1), out=d)
        # fp32 output: multiply straight into it (one pass fewer). Lower precision: finish in
        # fp32 and round once, as autograd through `.float()` would.
        dst = out[r0:r1] if direct else e
        torch.mul(e, d, out=dst)
        rows = torch.arange(r1 - r0, device=e.device)
        dst[rows, local[r0:r1]] += onehot_grad[r0:r1]
        if not direct:
            out[r0:r1].copy_(e)
    return out


class ChunkedVocabParallelLogprobs(torch.autograd.Function):
    """(logits [N, V_local], targets [N]) -> (logp fp32 [N], entropy fp32 [N] or empty)."""

    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        targets: torch.Tensor,
        vocab_start: int,
        temperature: float,
        tp_group: Optional[dist.ProcessGroup],
        with_entropy: bool,
        inplace_backward: bool,
        chunk_rows: int,
    ):
        part = chunked_shard_partials(logits, targets, vocab_start, temperature, with_entropy, chunk_rows)
        return finish_forward(
            ctx,
            part,
            logits,
            targets,
            vocab_start,
            tp_group,
            with_entropy,
            (vocab_start, temperature, with_entropy, inplace_backward, chunk_rows),
        )

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        vocab_start, temperature, with_entropy, inplace, chunk_rows = ctx.cfg
        logits, targets, row_max, log_sum, entropy, g_logp, g_ent, use_entropy = backward_inputs(
            ctx, g_logp, g_ent, with_entropy
        )
        out = logits if inplace else torch.empty_like(logits)
        chunked_shard_grad(
            logits,
            targets,
            row_max,
            log_sum,
            entropy if use_entropy else None,
            g_logp,
            g_ent,
            vocab_start,
            temperature,
            out,
            chunk_rows,
        )
        return out, None, None, None, None, None, None, None
