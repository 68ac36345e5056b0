"""The global SFT coefficient mu(step): linear warmup, cosine decay, then a floor.

    step < warmup                : mu = peak * step / warmup
    warmup <= step < warmup+decay: mu = valley + (peak - valley) * 0.5 * (1 + cos(pi * (step - warmup) / decay))
    step >= warmup + decay       : mu = valley

With warmup = decay = 0 mu is the constant `valley` (CHORD-phi uses this with valley = 0.1).
"""

from __future__ import annotations

import math


def mu_schedule(step: int, *, warmup: int, decay: int, peak: float, valley: float) -> float:
    """mu at optimiser step `step` (0-based)."""
    if step < 0:
        raise ValueError(f"mu_schedule: step must be >= 0, got {step}")
    if warmup < 0 or decay < 0:
        raise ValueError(f"mu_schedule: warmup and decay must be >= 0, got {warmup}, {decay}")
    if step < warmup:
        return peak * step / warmup
    if step < warmup + decay:
        progress = (step - warmup) / decay
        return valley + (peak - valley) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return valley


def staged_mu(step: int, *, sft_steps: int, warmup: int, decay: int, peak: float, valley: float) -> float:
    """SFT-then-RL and friends: mu = 1 for the first `sft_steps` steps, then mu_schedule counted
    from the end of that stage (peak = valley = 0 gives the binary step of SFT-then-RL)."""
    if sft_steps < 0:
        raise ValueError(f"staged_mu: sft_steps must be >= 0, got {sft_steps}")
    if step < sft_steps:
        return 1.0
    return mu_schedule(step - sft_steps, warmup=warmup, decay=decay, peak=peak, valley=valley)


def adaptive_mu(mean_reward: float, *, tau: float = 0.5) -> float:
    """The appendix's reward-driven alternative: mu = max(0, tau - mean reward of the batch)."""
    return max(0.0, tau - mean_reward)
