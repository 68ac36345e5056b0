"""Turn per-shard row partials into log p(target) and entropy, with the TP communication.

Both fast paths (the Triton kernel and the chunked torch code) reduce their vocabulary shard to
four fp32 numbers per row and hand them to `combine_shard_partials`, which does exactly two
collectives over the tensor-parallel group: one MAX all-reduce of the row maxima and one SUM
all-reduce of a packed [4, N] tensor. The backward pass needs no communication at all: the
gradient of a shard only depends on the global M, log S and entropy, which are returned here.

Notation for one row and temperature T: z_j = x_j / T over the *global* vocabulary,
M = max_j z_j, S = sum_j exp(z_j - M), p_j = exp(z_j - M) / S.
  log p(t) = (z_t - M) - log S
  H = -sum_j p_j log p_j = log S - (sum_j exp(z_j - M) (z_j - M)) / S
The entropy partial is accumulated on the max-shifted logits (z - m) rather than on z, so that H
is not the difference of two large numbers when logits are large (|z| ~ 1e3 loses ~4 digits).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist


class ShardPartials(NamedTuple):
    """Per-row reductions of one vocabulary shard, all fp32 [N].

    row_max:     m = max_j z_j over the shard (a large negative sentinel if nothing was seen).
    sum_exp:     sum_j exp(z_j - m).
    sum_exp_dz:  sum_j exp(z_j - m) * (z_j - m)   (only meaningful when entropy is wanted).
    target_z:    z_t if this shard owns the target id, else 0.
    """

    row_max: torch.Tensor
    sum_exp: torch.Tensor
    sum_exp_dz: torch.Tensor
    target_z: torch.Tensor


class Combined(NamedTuple):
    """Results replicated on every TP rank, fp32 [N] (entropy None when not requested)."""

    logp: torch.Tensor
    entropy: Optional[torch.Tensor]
    row_max: torch.Tensor  # global M
    log_sum: torch.Tensor  # log S; lse = M + log S, kept apart (see below)
    valid: torch.Tensor  # bool [N]: the target id lies on some shard


def owned_mask(targets: torch.Tensor, vocab_start: int, v_local: int) -> torch.Tensor:
    """bool [N]: this shard holds column `targets - vocab_start`."""
    return (targets >= vocab_start) & (targets < vocab_start + v_local)


def combine_shard_partials(
    part: ShardPartials,
    owned: torch.Tensor,
    tp_group: Optional[dist.ProcessGroup],
    with_entropy: bool,
) -> Combined:
    """All-reduce the shard partials across `tp_group` (None: a single shard) and finish the math.

    Targets that no shard owns (e.g. an ignore_index of -100) get logp = 0 and are reported in
    `valid`, so that callers can mask them; the backward pass drops their log-prob gradient.
    """
    global_max = part.row_max.clone()
    if tp_group is not None:
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=tp_group)
    # Re-base this shard's sums from its own max m to the global max M:
    #   sum e^(z-M)        = a * sum e^(z-m)                       with a = e^(m-M)
    #   sum e^(z-M) (z-M)  = a * (sum e^(z-m)(z-m) + (m-M) sum e^(z-m))
    shift = part.row_max - global_max
    scale = torch.exp(shift)
    packed = torch.stack(
        [
            part.sum_exp * scale,
            scale * (part.sum_exp_dz + shift * part.sum_exp),
            part.target_z,
            owned.to(torch.float32),
        ]
    )
    if tp_group is not None:
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=tp_group)
    sum_exp, sum_exp_dz, target_z, n_owners = packed.unbind(0)
    log_sum = torch.log(sum_exp)
    valid = n_owners > 0
    # (z_t - M) - log S, never z_t - (M + log S): with logits ~1e3 the rounding of M + log S
    # alone is ~3e-5. The backward kernels follow the same order for log p_j.
    logp = torch.where(valid, (target_z - global_max) - log_sum, torch.zeros_like(log_sum))
    entropy = log_sum - sum_exp_dz / sum_exp if with_entropy else None
    return Combined(logp, entropy, global_max, log_sum, valid)


# ----------------------------------------------------------------------------------------------
# The parts of the autograd Functions that do not depend on how the shard is swept
# ----------------------------------------------------------------------------------------------
def finish_forward(
    ctx,
    part: torch.Tensor,
    logits: torch.Tensor,
    targets: torch.Tensor,
    vocab_start: int,
    tp_group: Optional[dist.ProcessGroup],
    with_entropy: bool,
    cfg: tuple,
):
    """Combine this shard's partials across the TP group and save what backward needs;
    returns (logp, entropy or an empty tensor)."""
    owned = owned_mask(targets, vocab_start, logits.shape[1])
    res = combine_shard_partials(part, owned, tp_group, with_entropy)
    entropy = res.entropy if with_entropy else res.log_sum.new_empty(0)
    ctx.save_for_backward(logits, targets, res.row_max, res.log_sum, res.valid, entropy)
    ctx.cfg = cfg
    ctx.set_materialize_grads(False)
    return res.logp, entropy


def backward_inputs(ctx, g_logp: Optional[torch.Tensor], g_ent: Optional[torch.Tensor], with_entropy: bool):
    """(logits, targets, row_max, log_sum, entropy, g_logp, g_ent, use_entropy): upstream
    gradients as fp32, 0 for targets outside the vocabulary; g_ent is None when unused."""
    logits, targets, row_max, log_sum, valid, entropy = ctx.saved_tensors
    use_entropy = with_entropy and g_ent is not None
    zeros = torch.zeros_like(log_sum)
    g_logp = zeros if g_logp is None else torch.where(valid, g_logp.float(), zeros)
    return logits, targets, row_max, log_sum, entropy, g_logp, (g_ent.float() if use_entropy else None), use_entropy
