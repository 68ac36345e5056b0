"""The CHORD algorithm in pure torch: no Megatron, no torch.distributed, no I/O.

Read top to bottom: schedules (mu), weights (phi), advantages (GRPO), losses (CHORD).
"""

from .advantages import group_advantages
from .losses import chord_loss
from .schedules import adaptive_mu, mu_schedule, staged_mu
from .weights import TOKEN_WEIGHT_KINDS, token_weights

__all__ = [
    "adaptive_mu",
    "chord_loss",
    "group_advantages",
    "mu_schedule",
    "staged_mu",
    "token_weights",
    "TOKEN_WEIGHT_KINDS",
]
