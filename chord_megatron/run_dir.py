"""A run's output folder: what an earlier run left there, and the guard that keeps a new run
from mixing into it.

A second `chord train` into the folder of another run would truncate its metrics.jsonl, add
TensorBoard event files next to the old ones, point the checkpoint root's `latest` at the new
run and leave the old checkpoints out of `keep_last`. So `chord train` refuses such a folder
unless told which of two things is meant: `--resume` (continue that run) or `--overwrite`
(start over: the earlier run's files are removed first, and named). Only files this project
writes there are ever removed: metrics.jsonl, the TensorBoard event files, curves.png and the
checkpoint root's step folders and `latest`; anything else in the folder stays.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

from .config import Config
from .errors import ChordError

_STEP_DIR = re.compile(r"^(\.tmp\.)?step_\d+$")  # checkpoint.py's step folders, and their debris
_POINTERS = ("latest", "latest.tmp")  # checkpoint.py's pointer, and its debris
_EVENTS = "events.out.tfevents.*"  # what TensorBoard's SummaryWriter writes


class OutputDirError(ChordError):
    exit_code, kind = 2, "output folder"


@dataclass
class EarlierRun:
    """The files a run of this project left in an output folder (paths that exist)."""

    metrics: List[Path] = field(default_factory=list)
    events: List[Path] = field(default_factory=list)
    checkpoints: List[Path] = field(default_factory=list)
    pointers: List[Path] = field(default_factory=list)
    curves: List[Path] = field(default_factory=list)

    def __bool__(self) -> bool:
        # curves.png alone (a run that wrote nothing else) is not worth refusing a run for
        return bool(self.metrics or self.events or self.checkpoints or self.pointers)

    def files(self) -> List[Path]:
        return [*self.metrics, *self.events, *self.checkpoints, *self.pointers, *self.curves]

    def describe(self) -> str:
        parts = []
        if self.metrics:
            n = _count_lines(self.metrics[0])
            parts.append(f"{self.metrics[0].name} ({n} record{'s' * (n != 1)})")
        if self.events:
            parts.append(f"{len(self.events)} TensorBoard event file{'s' * (len(self.events) > 1)}")
        steps = [p.name for p in self.checkpoints if not p.name.startswith(".tmp.")]
        if steps:
            parts.append(f"checkpoint{'s' * (len(steps) > 1)} {', '.join(steps)}")
        elif self.checkpoints or self.pointers:
            parts.append("an incomplete checkpoint")
        return ", ".join(parts)


def checkpoint_root(cfg: Config) -> Path:
    """Where the loop writes its checkpoints (loop.py uses the same default)."""
    return Path(cfg.checkpoint.dir or Path(cfg.train.output_dir) / "checkpoints")


def earlier_run(cfg: Config) -> EarlierRun:
    out, root = Path(cfg.train.output_dir), checkpoint_root(cfg)
    run = EarlierRun()
    run.metrics = [p for p in (out / "metrics.jsonl", out / "metrics.jsonl.tmp") if p.is_file()]
    run.events = sorted(p for p in (out / "tensorboard").glob(_EVENTS) if p.is_file())
    if root.is_dir():
        run.checkpoints = sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))
    run.pointers = [root / n for n in _POINTERS if (root / n).is_file()]
    run.curves = [p for p in (out / "curves.png",) if p.is_file()]
    return run


def check_output_dir(cfg: Config, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run on top of another one (see the module doc); with `overwrite`,
    remove the earlier run's files and say which. Call it on one process only (rank 0), before
    the run writes anything."""
    out = Path(cfg.train.output_dir)
    if resume and overwrite:
        raise OutputDirError("--resume continues the run in the output folder, --overwrite replaces it: give one")
    if resume:
        return
    run = earlier_run(cfg)
    if not run:
        return
    if not overwrite:
        raise OutputDirError(
            f"{out} already holds a run ({run.describe()}): continue it with --resume, or start over with --overwrite"
        )
    print(f"--overwrite: replacing the earlier run in {out}: {run.describe()}", flush=True)
    for path in run.files():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())
