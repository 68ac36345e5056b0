"""A tqdm bar over the steps showing the numbers a user watches; silent when disabled."""

from __future__ import annotations

from typing import Dict


class ProgressBar:
    KEYS = (
        ("reward/mean", "reward"),
        ("eval/accuracy", "acc"),
        ("mu", "mu"),
        ("entropy/rl", "ent"),
        ("mismatch/max", "mism"),
    )

    def __init__(self, start: int, total: int, *, enabled: bool):
        self.bar = None
        self.shown: Dict[str, str] = {}
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="chord", unit="step", dynamic_ncols=True)

    def update(self, metrics: Dict[str, float]) -> None:
        if self.bar is None:
            return
        for key, short in self.KEYS:
            if key in metrics:
                self.shown[short] = f"{metrics[key]:.3g}"
        self.bar.set_postfix(self.shown, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
