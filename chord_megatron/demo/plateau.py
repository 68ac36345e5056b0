"""The base stage's stop rule: stop at a plateau of a held-out score.

Pure bookkeeping (no torch): the stage feeds it one score per evaluation and asks whether to go
on. A plateau is `patience` evaluations in a row that improved on the best score so far by less
than `min_delta`. Stopping there, rather than at a fixed step on a still-rising curve, is what
keeps the base model (and every number measured from it) from hinging on float rounding: two
machines whose runs differ in the last bits reach the same plateau.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple


@dataclass
class Plateau:
    patience: int
    min_delta: float
    history: List[Tuple[int, float]] = field(default_factory=list)  # (step, score)
    best: float = float("-inf")
    stale: int = 0  # evaluations since the last improvement of at least min_delta

    def update(self, step: int, score: float) -> bool:
        """Record `score` at `step`; True when the stage should stop."""
        self.history.append((step, score))
        if score >= self.best + self.min_delta:
            self.best, self.stale = score, 0
        else:
            self.best = max(self.best, score)
            self.stale += 1
        return self.stale >= self.patience
