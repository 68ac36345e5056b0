"""Per-token weights phi on the expert NLL (CHORD-phi and the ablations the paper compares).

Every weight is computed from the current forward pass and **detached**: phi scales each expert
token's NLL gradient but no gradient flows through phi itself.

kinds
  none     phi = 1                       plain SFT
  p        phi = p                       importance-sampling style (the paper: entropy collapses)
  p1mp     phi = p (1 - p)               CHORD-phi, the default; peaks at p = 0.5
  entropy  phi = H_t / log V             normalised token entropy (needs `entropy`, `vocab_size`)
  focal    phi = (1 - p) ** gamma        focal-loss style
  is_clip  phi = min(p, is_cap)          clipped importance sampling
"""

from __future__ import annotations

import math
from typing import Optional

import torch

TOKEN_WEIGHT_KINDS = ("none", "p", "p1mp", "entropy", "focal", "is_clip")


def token_weights(
    logp: torch.Tensor,
    kind: str = "p1mp",
    *,
    entropy: Optional[torch.Tensor] = None,
    gamma: float = 2.0,
    cutoff_prob: Optional[float] = None,
    vocab_size: Optional[int] = None,
    is_cap: float = 0.4,
) -> torch.Tensor:
    """Detached weights, same shape as `logp` (the log-prob of each expert token), in fp32.

    `cutoff_prob`: tokens the model already gives p > cutoff_prob get weight 0. The reference
    implementation clamps log p at log(cutoff) from above before the NLL, which zeroes exactly
    those tokens' gradients; weighting them by 0 gives the same gradient without the constant
    that the clamp adds to the loss value.
    """
    logp = logp.detach().float()
    p = logp.exp()
    if kind == "none":
        w = torch.ones_like(p)
    elif kind == "p":
        w = p
    elif kind == "p1mp":
        w = p * (1.0 - p)
    elif kind == "entropy":
        if entropy is None or vocab_size is None:
            raise ValueError("token_weights(kind='entropy') needs `entropy` and `vocab_size`")
        if vocab_size < 2:
            raise ValueError(f"token_weights: vocab_size must be >= 2, got {vocab_size}")
        w = entropy.detach().float() / math.log(vocab_size)
    elif kind == "focal":
        w = (1.0 - p).clamp(min=0.0) ** gamma
    elif kind == "is_clip":
        w = p.clamp(max=is_cap)
    else:
        raise ValueError(f"token_weights: unknown kind {kind!r}; expected one of {TOKEN_WEIGHT_KINDS}")
    if cutoff_prob is not None:
        if not 0.0 < cutoff_prob <= 1.0:
            raise ValueError(f"token_weights: cutoff_prob must be in (0, 1], got {cutoff_prob}")
        w = torch.where(p > cutoff_prob, torch.zeros_like(w), w)
    return w
