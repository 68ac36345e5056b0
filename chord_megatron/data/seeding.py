"""Every seed a run derives, in one place: from (train.seed, a position) and a named salt.

What a step samples -- its prompts, its expert rows, its rollouts, the held-out evaluation --
is a function of (seed, step) alone, which is what lets `--resume` repeat a run exactly and
gives every variant of `chord compare` the same data. Each use has its own salt, so that two
uses at the same step never share a stream.
"""

from __future__ import annotations

import random
from typing import List

# Salts of step_seed: what the seed is for.
ROLLOUT = 0  # the step's rollouts
EVAL = 1  # the held-out evaluation after `step` updates (in training and `chord eval`)
# Salts of epoch_order: which rows of a set a step takes.
PROMPTS = 1
EXPERT = 2
# The weight-sync probe batch: one fixed seed, so every check samples the same tokens.
PROBE = 20_260_517


def _mix(seed: int, a: int, b: int) -> int:
    return int(seed) * 1_000_003 + a * 7919 + b * 104_729


def step_seed(seed: int, step: int, salt: int = ROLLOUT) -> int:
    """The sampling seed of (seed, step) for one use (a salt above); fits an int32."""
    return _mix(seed, step, salt) % (2**31 - 1)


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """SGLang's sampling_seed for one sample of a seeded generate call (a non-negative int64)."""
    return (_mix(seed, prompt_index, sample_index) + 1) % (2**62)


def epoch_order(size: int, seed: int, salt: int, epoch: int) -> List[int]:
    """The permutation of range(size) that `epoch` of a row set (PROMPTS or EXPERT) walks."""
    order = list(range(size))
    random.Random(f"{seed}/{salt}/{epoch}").shuffle(order)
    return order
