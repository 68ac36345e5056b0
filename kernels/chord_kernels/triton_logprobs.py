"""Triton kernels for vocabulary-parallel log p(target) and entropy, and their autograd Function.

Memory traffic is the whole cost of this op (a few flops per logit), so each pass touches the
logits shard exactly once: the forward kernel streams [N, V_local] once with an online softmax and
writes 4 floats per row; the backward kernel reads the shard once and writes the gradient once,
optionally over the logits themselves. Nothing of size N x V is ever allocated in fp32.

Each program owns ROWS rows and walks the vocabulary in BLOCK_V-wide tiles of shape
[ROWS, BLOCK_V]. On a GPU one row per program already gives enough parallelism (N is thousands);
under TRITON_INTERPRET=1 every program x tile step costs milliseconds of Python, so CPU runs use
many rows per program to keep the step count small. The launch configuration (launch.py) also
chooses between per-row and per-lane accumulators in the forward pass: per-row state costs three
block-wide reductions (cross-warp, through shared memory) on every tile; per-lane state costs
registers ([ROWS, BLOCK_V] x 3) and one merge after the loop.

Load pipelining: Triton's pipeliner leaves the loads of a plain `range` loop alone whatever the
launch's num_stages (no tl.dot consumes them; checked in the sm_90 PTX of Triton 3.6 and 3.7).
Only `tl.range(..., num_stages=k)` with k > 1 makes it prefetch k - 1 tiles ahead through shared
memory with cp.async, so the depth is a constexpr of both kernels; the launch option gets the same
value.

Masked lanes: the forward loads them as -inf so that they vanish from max and exp, but any
product with them (0 * -inf) is NaN; every such product is guarded with tl.where. A GPU happens to
hide some of these NaNs in masked stores, the interpreter does not -- which is why the guards exist.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import triton
import triton.language as tl

from .combine import ShardPartials, backward_inputs, finish_forward
from .launch import LaunchConfig, default_launch

# Starting value of the running max. Finite on purpose: with -inf, the rescale term
# (m_old - m_new) * s_old would be -inf * 0 = NaN on the first tile.
_MAX_SENTINEL = tl.constexpr(-1.0e30)


@triton.jit
def _row_update(z, m, s, s_dz, WITH_ENTROPY: tl.constexpr):
    """Online-softmax step with per-row state [ROWS]: three block-wide reductions per tile."""
    m_new = tl.maximum(m, tl.max(z, axis=1))
    alpha = tl.exp(m - m_new)
    dz = z - m_new[:, None]  # -inf on masked lanes
    e = tl.exp(dz)  # exactly 0 on masked lanes
    if WITH_ENTROPY:
        # Zero dz where e == 0 (masked lanes, -inf logits) *before* multiplying: tl.where
        # evaluates both branches, so where(mask, e * dz, 0) would still form 0 * -inf = NaN.
        dz = tl.where(e > 0.0, dz, 0.0)
        s_dz = alpha * (s_dz + (m - m_new) * s) + tl.sum(e * dz, axis=1)
    s = alpha * s + tl.sum(e, axis=1)
    return m_new, s, s_dz


@triton.jit
def _lane_update(z, m, s, s_dz, WITH_ENTROPY: tl.constexpr):
    """Online-softmax step with per-lane state [ROWS, BLOCK_V]: no cross-lane work at all.

    Per lane the new max is either the old one (z <= m) or z itself, so a single exp,
    t = exp(-|z - m|), is both the rescale factor of the old sums (z > m) and the new term
    (z <= m): one exp per logit, as in the row-wise path, not two.
    """
    d = z - m  # -inf on masked lanes (m is always finite)
    up = d > 0.0
    x = -tl.abs(d)
    t = tl.exp(x)  # exactly 0 on masked lanes
    if WITH_ENTROPY:
        # The old sums shift by m_old - m_new = x (z > m); the new term is t * (z - m_new) = t * x
        # (z <= m). Zero x where t == 0 first: 0 * -inf would be NaN, and the true term is 0.
        x = tl.where(t > 0.0, x, 0.0)
        s_dz = tl.where(up, t * (s_dz + x * s), s_dz + t * x)
    s = tl.where(up, t * s + 1.0, s + t)
    return tl.maximum(m, z), s, s_dz


@triton.jit
def _merge_lanes(m, s, s_dz, WITH_ENTROPY: tl.constexpr):
    """[ROWS, BLOCK_V] lane states -> [ROWS] row states, rescaled to the row max (exact merge)."""
    m_row = tl.max(m, axis=1)
    # Finite: every lane max starts at the finite sentinel. Lanes that saw nothing have s == 0,
    # so their (sentinel - m_row) * s is 0, and lanes far below the max get scale == 0.
    shift = m - m_row[:, None]
    scale = tl.exp(shift)
    s_row = tl.sum(scale * s, axis=1)
    if WITH_ENTROPY:
        s_dz_row = tl.sum(scale * (s_dz + shift * s), axis=1)
    else:
        s_dz_row = tl.zeros_like(s_row)
    return m_row, s_row, s_dz_row


@triton.jit
def logprob_fwd_kernel(
    x_ptr,  # logits shard, [N, V_local], fp32/bf16/fp16, any strides
    stride_xn,
    stride_xv,
    tgt_ptr,  # int32/int64 [N], global vocabulary ids
    part_ptr,  # fp32 [4, N] out: row max, sum exp, sum exp*(z-m), target z
    n_rows,
    v_local,
    vocab_start,
    inv_temp,
    ROWS: tl.constexpr,
    BLOCK_V: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    LANE_ACC: tl.constexpr,  # per-lane accumulators, reduced once after the loop
    NUM_STAGES: tl.constexpr,  # load pipelining depth of the tile loop (1: none)
):
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    # int64: N * V exceeds 2**31 for realistic shapes (16k tokens x 152k vocabulary).
    row_off = rows.to(tl.int64) * stride_xn
    lanes = tl.arange(0, BLOCK_V)

    if LANE_ACC:
        m = tl.full([ROWS, BLOCK_V], _MAX_SENTINEL, tl.float32)
        s = tl.zeros([ROWS, BLOCK_V], tl.float32)
        s_dz = tl.zeros([ROWS, BLOCK_V], tl.float32)
    else:
        m = tl.full([ROWS], _MAX_SENTINEL, tl.float32)
        s = tl.zeros([ROWS], tl.float32)
        s_dz = tl.zeros([ROWS], tl.float32)
    for start in tl.range(0, v_local, BLOCK_V, num_stages=NUM_STAGES):
        cols = start + lanes
        mask = row_ok[:, None] & (cols < v_local)[None, :]
        ptrs = x_ptr + row_off[:, None] + cols.to(tl.int64)[None, :] * stride_xv
        z = tl.load(ptrs, mask=mask, other=float("-inf")).to(tl.float32) * inv_temp
        if LANE_ACC:
            m, s, s_dz = _lane_update(z, m, s, s_dz, WITH_ENTROPY)
        else:
            m, s, s_dz = _row_update(z, m, s, s_dz, WITH_ENTROPY)
    if LANE_ACC:
        m, s, s_dz = _merge_lanes(m, s, s_dz, WITH_ENTROPY)

    # Only the shard that owns the target reads its logit; the others contribute 0 to the sum.
    t_loc = tl.load(tgt_ptr + rows, mask=row_ok, other=-1).to(tl.int64) - vocab_start
    owned = row_ok & (t_loc >= 0) & (t_loc < v_local)
    t_loc = tl.where(owned, t_loc, 0)
    x_t = tl.load(x_ptr + row_off + t_loc * stride_xv, mask=owned, other=0.0)
    z_t = tl.where(owned, x_t.to(tl.float32) * inv_temp, 0.0)

    tl.store(part_ptr + rows, m, mask=row_ok)
    tl.store(part_ptr + n_rows + rows, s, mask=row_ok)
    tl.store(part_ptr + 2 * n_rows + rows, s_dz, mask=row_ok)
    tl.store(part_ptr + 3 * n_rows + rows, z_t, mask=row_ok)


@triton.jit
def logprob_bwd_kernel(
    x_ptr,  # logits shard [N, V_local] (read)
    stride_xn,
    stride_xv,
    gx_ptr,  # gradient [N, V_local] (written; may be x_ptr itself)
    stride_gn,
    stride_gv,
    tgt_ptr,  # int [N] global ids
    stats_ptr,  # fp32 [5, N]: global max M, log S, entropy, dL/dlogp (0 for invalid targets), dL/dH
    n_rows,
    v_local,
    vocab_start,
    inv_temp,
    ROWS: tl.constexpr,
    BLOCK_V: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    NUM_STAGES: tl.constexpr,  # load pipelining depth of the tile loop (1: none)
):
    # For z = x / T and p = softmax(z):
    #   d logp_t / dz_j = 1[j = t] - p_j
    #   dH / dz_j       = -p_j (log p_j + H)
    # so dL/dx_j = (g_logp (1[j = t] - p_j) - g_H p_j (log p_j + H)) / T.
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    x_off = rows.to(tl.int64) * stride_xn
    g_off = rows.to(tl.int64) * stride_gn
    lanes = tl.arange(0, BLOCK_V)

    row_max = tl.load(stats_ptr + rows, mask=row_ok, other=0.0)
    log_sum = tl.load(stats_ptr + n_rows + rows, mask=row_ok, other=0.0)
    g_lp = tl.load(stats_ptr + 3 * n_rows + rows, mask=row_ok, other=0.0)
    if WITH_ENTROPY:
        ent = tl.load(stats_ptr + 2 * n_rows + rows, mask=row_ok, other=0.0)
        g_h = tl.load(stats_ptr + 4 * n_rows + rows, mask=row_ok, other=0.0)
    # A target on another shard gives an index outside [0, V_local) that no column matches.
    t_loc = tl.load(tgt_ptr + rows, mask=row_ok, other=-1).to(tl.int64) - vocab_start

    for start in tl.range(0, v_local, BLOCK_V, num_stages=NUM_STAGES):
        cols = start + lanes
        mask = row_ok[:, None] & (cols < v_local)[None, :]
        # Masked lanes read 0 (not -inf): they are never stored, and stay finite on the way.
        x = tl.load(x_ptr + x_off[:, None] + cols.to(tl.int64)[None, :] * stride_xv, mask=mask, other=0.0)
        # (z - M) - log S, in this order: z - M is exact for the large z that matter.
        logp = (x.to(tl.float32) * inv_temp - row_max[:, None]) - log_sum[:, None]
        p = tl.exp(logp)
        gz = -p * g_lp[:, None]
        if WITH_ENTROPY:
            # p == 0 only for -inf logits (log p = -inf): their entropy term is 0, not 0 * -inf.
            gz -= g_h[:, None] * p * tl.where(p > 0.0, logp + ent[:, None], 0.0)
        gz += tl.where(cols.to(tl.int64)[None, :] == t_loc[:, None], g_lp[:, None], 0.0)
        g_ptrs = gx_ptr + g_off[:, None] + cols.to(tl.int64)[None, :] * stride_gv
        tl.store(g_ptrs, (gz * inv_temp).to(gx_ptr.dtype.element_ty), mask=mask)


def is_interpreted() -> bool:
    """True when TRITON_INTERPRET=1 was set before this module was imported (CPU execution)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(logprob_fwd_kernel, InterpretedFunction)


def shard_partials(
    logits: torch.Tensor,
    targets: torch.Tensor,
    vocab_start: int,
    temperature: float,
    with_entropy: bool,
    launch: LaunchConfig,
) -> ShardPartials:
    """Launch the forward kernel on a [N, V_local] shard; returns fp32 [N] partials."""
    n, v_local = logits.shape
    part = torch.empty(4, n, dtype=torch.float32, device=logits.device)
    if n > 0:
        grid = (triton.cdiv(n, launch.rows_per_program),)
        logprob_fwd_kernel[grid](
            logits,
            logits.stride(0),
            logits.stride(1),
            targets,
            part,
            n,
            v_local,
            vocab_start,
            1.0 / temperature,
            ROWS=launch.rows_per_program,
            BLOCK_V=launch.block_v,
            WITH_ENTROPY=with_entropy,
            LANE_ACC=launch.lane_accumulators,
            NUM_STAGES=launch.num_stages,
            num_warps=launch.num_warps,
            num_stages=launch.num_stages,
        )
    return ShardPartials(*part.unbind(0))


def shard_grad(
    logits: torch.Tensor,
    targets: torch.Tensor,
    stats: torch.Tensor,
    vocab_start: int,
    temperature: float,
    with_entropy: bool,
    out: torch.Tensor,
    launch: LaunchConfig,
) -> torch.Tensor:
    """Launch the backward kernel; `stats` is fp32 [5, N] (M, log S, H, g_logp, g_H). Returns `out`."""
    n, v_local = logits.shape
    if n > 0:
        grid = (triton.cdiv(n, launch.rows_per_program),)
        logprob_bwd_kernel[grid](
            logits,
            logits.stride(0),
            logits.stride(1),
            out,
            out.stride(0),
            out.stride(1),
            targets,
            stats,
            n,
            v_local,
            vocab_start,
            1.0 / temperature,
            ROWS=launch.rows_per_program,
            BLOCK_V=launch.block_v,
            WITH_ENTROPY=with_entropy,
            NUM_STAGES=launch.num_stages,
            num_warps=launch.num_warps,
            num_stages=launch.num_stages,
        )
    return out


class TritonVocabParallelLogprobs(torch.autograd.Function):
    """(logits [N, V_local], targets [N]) -> (logp fp32 [N], entropy fp32 [N] or empty).

    The entropy output is an empty tensor when with_entropy=False (the public entry point turns it
    into None). Backward returns a gradient with the logits' dtype, written over the logits when
    inplace_backward=True.
    """

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
        launch: Optional[LaunchConfig],
    ):
        launch = launch or default_launch(logits.shape[1], is_interpreted())
        part = shard_partials(logits, targets, vocab_start, temperature, with_entropy, launch)
        return finish_forward(
            ctx,
            part,
            logits,
            targets,
            vocab_start,
            tp_group,
            with_entropy,
            (vocab_start, temperature, with_entropy, inplace_backward, launch),
        )

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        vocab_start, temperature, with_entropy, inplace, launch = ctx.cfg
        logits, targets, row_max, log_sum, entropy, g_logp, g_ent, use_entropy = backward_inputs(
            ctx, g_logp, g_ent, with_entropy
        )
        zeros = torch.zeros_like(log_sum)
        ent, g_ent = (entropy, g_ent) if use_entropy else (zeros, zeros)
        stats = torch.stack([row_max, log_sum, ent, g_logp, g_ent])
        out = logits if inplace else torch.empty_like(logits)
        shard_grad(logits, targets, stats, vocab_start, temperature, use_entropy, out, launch)
        return out, None, None, None, None, None, None, None
