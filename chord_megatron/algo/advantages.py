"""GRPO advantages: each response's reward relative to the other responses to its prompt."""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    eps: float = 1e-6,
    scale: str = "std",
    singleton: str = "zero",
) -> torch.Tensor:
    """Per-response advantages, shape [B] like `rewards`, fp32.

    `rewards` holds B = G * group_size rewards, the responses to one prompt contiguous.
      scale="std":  A = (R - mean(group)) / (std(group) + eps), std unbiased (as torch.std)
      scale="none": A = R - mean(group)  (the mean-only variant)
    A group of one response has no baseline. singleton="zero" (default) gives it A = 0, so it
    does not move the policy; singleton="raw" reproduces verl / Trinity-RFT, which use mean 0
    and std 1 there, i.e. A = R.
    """
    if group_size < 1:
        raise ValueError(f"group_advantages: group_size must be >= 1, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"group_advantages: rewards must be 1-D with a length divisible by group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    if scale not in ("std", "none"):
        raise ValueError(f"group_advantages: scale must be 'std' or 'none', got {scale!r}")
    if singleton not in ("zero", "raw"):
        raise ValueError(f"group_advantages: singleton must be 'zero' or 'raw', got {singleton!r}")
    r = rewards.detach().float().view(-1, group_size)
    if r.numel() == 0:  # a step without rollouts (pure SFT)
        return r.view(-1)
    if group_size == 1:
        return (torch.zeros_like(r) if singleton == "zero" else r.clone()).view(-1)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "std":
        centred = centred / (r.std(dim=1, keepdim=True, unbiased=True) + eps)
    return centred.view(-1)
