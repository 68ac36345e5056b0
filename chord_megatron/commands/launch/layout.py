"""Megatron's layout over the trainer GPUs, and the error of a layout that cannot work.

Shared by the plan (plan.py), which chooses the layout, and the memory estimate (memory.py),
which prices it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...errors import ChordError


class LayoutError(ChordError, ValueError):
    """An impossible layout; str(error) is the one-line reason."""

    exit_code, kind = 2, "launch plan"


@dataclass(frozen=True)
class ParallelLayout:
    """Megatron's layout over the trainer GPUs: world = TP x PP x CP x DP."""

    tp: int
    pp: int
    vpp: Optional[int]
    cp: int
    dp: int
    world: int
