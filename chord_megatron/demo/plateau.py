"""The base stage's stop rule: stop at a plateau of a held-out score, or on reaching a target.

Pure bookkeeping (no torch): the stage feeds it one score per evaluation and asks whether to go
on. A plateau is `patience` evaluations in a row that improved on the best score so far by less
than `min_delta`. Stopping there, rather than at a fixed step on a still-rising curve, is what
keeps the base model (and every number measured from it) from hinging on float rounding: two
machines whose runs differ in the last bits reach the same plateau.

A target (the first score at or above it) is for tasks whose plateau itself is chaotic: a tiny
model either finds 3-digit addition by direct answering or it does not (held-out accuracy
0.09 or 0.90 by seed). Stopping at a set score gives every seed and machine a base of the same
strength, as weak as the experiment needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple


@dataclass
class Plateau:
    patience: int
    min_delta: float
    target: float = 0.0  # stop at the first score >= target (0: no target)
    history: List[Tuple[int, float]] = field(default_factory=list)  # (step, score)
    best: float = float("-inf")
    stale: int = 0  # evaluations since the last improvement of at least min_delta

    @property
    def reason(self) -> str:
        """Why the stage stopped: the last score reached the target, else a plateau."""
        return "target" if self.target and self.history and self.history[-1][1] >= self.target else "plateau"

    def update(self, step: int, score: float) -> bool:
        """Record `score` at `step`; True when the stage should stop (see `reason`)."""
        self.history.append((step, score))
        if self.target and score >= self.target:
            return True
        if score >= self.best + self.min_delta:
            self.best, self.stale = score, 0
        else:
            self.best = max(self.best, score)
            self.stale += 1
        return self.stale >= self.patience
