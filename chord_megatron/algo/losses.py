"""The CHORD objective on one (micro-)batch of mixed rows.

    L = (1 - mu) * L_GRPO(on-policy rows) + mu * L_SFT(expert rows)

L_GRPO is the PPO clipped surrogate, token-mean over on-policy response tokens; L_SFT is the
phi-weighted NLL, token-mean over expert tokens. Each term has its **own** denominator, so the
share of expert rows in a batch does not rescale mu. When a batch is split into micro-batches
or across data-parallel ranks, the caller passes the global token counts in `denominators`
and sums the returned losses; the parallel layout then cannot change the update.

Everything here is pure tensor math: no torch.distributed, no host syncs (.item()), no I/O.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple, Union

import torch

from .weights import token_weights

Number = Union[float, torch.Tensor]


def chord_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    is_expert: torch.Tensor,
    mu: Number,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: Optional[float] = None,
    token_weight: str = "p1mp",
    denominators: Optional[Mapping[str, Number]] = None,
    tis_cap: Optional[float] = None,
    rollout_logp: Optional[torch.Tensor] = None,
    logratio_clamp: Optional[float] = 20.0,
    entropy: Optional[torch.Tensor] = None,
    weight_options: Optional[Mapping[str, object]] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """CHORD loss and metrics.

    Shapes: logp, old_logp, loss_mask: [B, T]; advantages: [B] or [B, T]; is_expert: [B] bool.
    logp is the current policy's log-prob of each token (with gradient); old_logp the
    behaviour policy's (ignored on expert rows, may hold anything there, NaN included).

    denominators: {"rl": N_rl, "sft": N_sft} global token counts; default: this batch's counts.
    dual_clip: c > 1; for negative advantages the surrogate is capped at -c * A (PPO dual clip).
    tis_cap: truncated importance sampling against rollout/trainer mismatch; each on-policy
      token's surrogate is multiplied by min(exp(old_logp - rollout_logp), tis_cap), detached.
      Needs `rollout_logp` (the engine's log-probs) while old_logp is the trainer's.
    logratio_clamp: log(pi/pi_old) is clamped to [-c, c] before exp (reference: 20).
    entropy: per-token entropy [B, T]; only reported (per row kind) and used by
      token_weight="entropy".
    weight_options: extra keywords for token_weights (gamma, cutoff_prob, vocab_size, is_cap).

    Returns (loss, metrics); loss is a 0-dim tensor. Metrics are detached 0-dim tensors:
    token-means over this call's own tokens plus the token counts, so a caller can combine
    them across micro-batches by count-weighting.
    """
    if logp.dim() != 2:
        raise ValueError(f"chord_loss: logp must be [B, T], got shape {tuple(logp.shape)}")
    B, T = logp.shape
    for name, t in (("old_logp", old_logp), ("loss_mask", loss_mask)):
        if t.shape != logp.shape:
            raise ValueError(f"chord_loss: {name} must have logp's shape {(B, T)}, got {tuple(t.shape)}")
    if is_expert.shape != (B,):
        raise ValueError(f"chord_loss: is_expert must be [B]={B}, got {tuple(is_expert.shape)}")
    if advantages.shape not in ((B,), (B, T)):
        raise ValueError(f"chord_loss: advantages must be [B] or [B, T], got {tuple(advantages.shape)}")
    if tis_cap is not None and rollout_logp is None:
        raise ValueError("chord_loss: tis_cap needs rollout_logp (the rollout engine's log-probs)")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"chord_loss: dual_clip must be > 1, got {dual_clip}")

    is_expert = is_expert.bool()
    mask = loss_mask.bool()
    rl_mask = mask & ~is_expert[:, None]
    sft_mask = mask & is_expert[:, None]
    rl_count = rl_mask.sum()
    sft_count = sft_mask.sum()
    if denominators is not None:
        rl_denom = denominators["rl"]
        sft_denom = denominators["sft"]
    else:
        rl_denom, sft_denom = rl_count, sft_count

    logp = logp.float()
    zeros = torch.zeros_like(logp)
    # Masked positions may hold garbage (padding, expert rows' old_logp): replace it before any
    # arithmetic so that neither the value nor the gradient can pick up a NaN from there.
    logp_rl = torch.where(rl_mask, logp, zeros)
    logp_sft = torch.where(sft_mask, logp, zeros)
    old = torch.where(rl_mask, old_logp.float(), logp_rl.detach())
    adv = advantages.float()
    if adv.dim() == 1:
        adv = adv[:, None].expand(B, T)
    adv = torch.where(rl_mask, adv, zeros)

    # --- GRPO clipped surrogate (on-policy rows) ---
    log_ratio = logp_rl - old
    if logratio_clamp is not None:
        log_ratio = log_ratio.clamp(-logratio_clamp, logratio_clamp)
    ratio = log_ratio.exp()
    surr_unclipped = -adv * ratio
    surr_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    surr = torch.maximum(surr_unclipped, surr_clipped)
    clipped = (surr_clipped > surr_unclipped) & rl_mask
    if dual_clip is not None:
        cap = -adv * dual_clip
        dual_active = (adv < 0) & (surr > cap) & rl_mask
        surr = torch.where(adv < 0, torch.minimum(surr, cap), surr)
    else:
        dual_active = torch.zeros_like(rl_mask)
    if tis_cap is not None:
        rollout = torch.where(rl_mask, rollout_logp.float(), old)
        tis_w = (old - rollout).exp().clamp(max=tis_cap).detach()
        surr = surr * tis_w
    grpo_loss = torch.where(rl_mask, surr, zeros).sum() / _safe(rl_denom)

    # --- phi-weighted SFT on expert rows ---
    opts = dict(weight_options or {})
    phi = token_weights(logp_sft, token_weight, entropy=entropy, **opts)
    phi = torch.where(sft_mask, phi, zeros)
    sft_loss = (-logp_sft * phi).sum() / _safe(sft_denom)

    loss = (1.0 - mu) * grpo_loss + mu * sft_loss

    with torch.no_grad():
        n_rl = _safe(rl_count)
        n_sft = _safe(sft_count)
        k3 = (ratio - 1.0) - log_ratio  # unbiased, non-negative estimate of KL(old || new)
        metrics = {
            "loss": loss.detach(),
            "grpo_loss": grpo_loss.detach(),
            "sft_loss": sft_loss.detach(),
            "sft_nll": -logp_sft.sum() / n_sft,
            "phi_mean": phi.sum() / n_sft,
            "clip_frac": clipped.sum() / n_rl,
            "dual_clip_frac": dual_active.sum() / n_rl,
            "approx_kl": torch.where(rl_mask, k3, zeros).sum() / n_rl,
            "ratio_mean": torch.where(rl_mask, ratio, zeros).sum() / n_rl,
            "rl_tokens": rl_count.float(),
            "sft_tokens": sft_count.float(),
            "mu": torch.as_tensor(mu, dtype=torch.float32),
        }
        if entropy is not None:
            ent = entropy.float()
            metrics["entropy_rl"] = torch.where(rl_mask, ent, zeros).sum() / n_rl
            metrics["entropy_sft"] = torch.where(sft_mask, ent, zeros).sum() / n_sft
        if tis_cap is not None:
            metrics["tis_weight_mean"] = torch.where(rl_mask, tis_w, zeros).sum() / n_rl
    return loss, metrics


def _safe(denominator: Number) -> torch.Tensor:
    """A denominator that is never 0: an empty row kind then sums to 0 / 1 = 0, with zero grad."""
    return torch.as_tensor(denominator, dtype=torch.float32).clamp(min=1.0)
