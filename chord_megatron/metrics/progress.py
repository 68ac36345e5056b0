"""Progress over the steps of a stage, showing the numbers a user watches; silent when disabled.

On a terminal it is a tqdm bar. Anywhere else (a log file, a pipe, slurm's output) a bar's
carriage-return redraws would pile up as one endless line, so it becomes plain lines instead:
one every tenth of the stage or every `every_s` seconds, whichever comes first, and one at the
end.
"""

from __future__ import annotations

import sys
import time
from typing import Dict, Optional, Sequence, TextIO, Tuple

LOOP_KEYS = (
    ("reward/mean", "reward"),
    ("eval/accuracy", "acc"),
    ("mu", "mu"),
    ("entropy/rl", "ent"),
    ("mismatch/max", "mism"),
)


class ProgressBar:
    KEYS = LOOP_KEYS

    def __init__(
        self,
        start: int,
        total: int,
        *,
        enabled: bool,
        desc: str = "chord",
        keys: Sequence[Tuple[str, str]] = LOOP_KEYS,
        stream: Optional[TextIO] = None,
        every_s: float = 30.0,
    ):
        self.bar = None
        self.lines: Optional[_PlainLines] = None
        self.keys = tuple(keys)
        self.shown: Dict[str, str] = {}
        if not enabled:
            return
        stream = stream or sys.stderr
        if _is_terminal(stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True, file=stream)
        else:
            self.lines = _PlainLines(start, total, desc, stream, every_s)

    def update(self, metrics: Dict[str, float]) -> None:
        if self.bar is None and self.lines is None:
            return
        for key, short in self.keys:
            if key in metrics:
                self.shown[short] = f"{float(metrics[key]):.3g}"
        if self.bar is not None:
            self.bar.set_postfix(self.shown, refresh=False)
            self.bar.update(1)
        else:
            self.lines.update(self.shown)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines is not None:
            self.lines.close(self.shown)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _PlainLines:
    """`desc: step 45/900 (5%), 2.1 step/s, reward=0.31 ...` now and then, without redraws."""

    def __init__(self, start: int, total: int, desc: str, stream: TextIO, every_s: float):
        self.n, self.start, self.total, self.desc, self.stream, self.every_s = (
            start,
            start,
            total,
            desc,
            stream,
            every_s,
        )
        self.t0 = self.last_t = time.monotonic()
        self.last_tenth = self._tenth(start)
        self.last_n = start

    def _tenth(self, n: int) -> int:
        return 10 * n // self.total if self.total else 10

    def update(self, shown: Dict[str, str]) -> None:
        self.n += 1
        now = time.monotonic()
        if self._tenth(self.n) > self.last_tenth or now - self.last_t >= self.every_s:
            self._write(shown, now)

    def close(self, shown: Dict[str, str]) -> None:
        if self.n != self.last_n or self.n == self.start:  # the end, unless just written
            self._write(shown, time.monotonic())

    def _write(self, shown: Dict[str, str], now: float) -> None:
        rate = (self.n - self.start) / max(now - self.t0, 1e-9)
        pct = f" ({100 * self.n // self.total}%)" if self.total else ""
        parts = [f"{self.desc}: step {self.n}/{self.total}{pct}", f"{rate:.3g} step/s"]
        parts += [f"{k}={v}" for k, v in shown.items()]
        print(", ".join(parts), file=self.stream, flush=True)
        self.last_t, self.last_tenth, self.last_n = now, self._tenth(self.n), self.n
