"""Ctrl-C during `chord train`: finish the step under way, checkpoint it, stop, and say how to go on.

    stop = StopOnCtrlC()
    with stop.armed():                      # in a single process; under torchrun Ctrl-C stays plain
        train(cfg, ..., stop=stop)          # the loop asks stop(updates) after every step
    stop.at                                 # the step it stopped at, or None

The first Ctrl-C only raises a flag: the loop saves a checkpoint of the step it just finished
and leaves, closing the metrics log as at the end of a run, so `--resume` continues exactly
there. A second Ctrl-C is the plain KeyboardInterrupt, at once; what is on disk is still whole
(metrics.jsonl is flushed record by record, a checkpoint is published only when complete).
Either way the command ends with one line, exit code 130 (128 + SIGINT, as shells report it):
`Stopped` below.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
from pathlib import Path
from typing import Iterator, List, Optional

from .errors import ChordError

EXIT_CODE = 130  # 128 + SIGINT


class Stopped(ChordError):
    """The run stopped on Ctrl-C; the message is the whole line (no kind prefix)."""

    exit_code, kind = EXIT_CODE, "stopped"

    def one_line(self) -> str:
        return str(self)


class StopOnCtrlC:
    def __init__(self) -> None:
        self.requested = False
        self.at: Optional[int] = None

    def __call__(self, updates: int) -> bool:
        """Asked by the loop once `updates` steps are done and logged: stop here?"""
        if self.requested:
            self.at = updates
        return self.requested

    @contextlib.contextmanager
    def armed(self) -> Iterator["StopOnCtrlC"]:
        def first(signum, frame):
            self.requested = True
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: at once
            print(
                "\nchord: Ctrl-C: stopping after this step, with a checkpoint (Ctrl-C again to stop now)",
                file=sys.stderr,
                flush=True,
            )

        previous = signal.signal(signal.SIGINT, first)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def resume_command(config: str, overrides: List[str], *, nproc: int = 1, no_progress: bool = False) -> str:
    """The command line that continues this run, as the user would type it."""
    argv = ["chord", "train", config, *overrides]
    if nproc > 1:
        argv += ["--nproc", str(nproc)]
    if no_progress:
        argv.append("--no-progress")
    return shlex.join([*argv, "--resume"])


def stopped(at: Optional[int], checkpoint_root: Path, command: str) -> Stopped:
    """The line for a run stopped at step `at` (None: somewhere unknown, by a plain
    KeyboardInterrupt): from the checkpoint it left, or with the way to start again."""
    saved = latest_step(checkpoint_root)
    if at is not None and saved == at:
        return Stopped(f"stopped at step {at}; continue with: {command}")
    if saved is not None:
        return Stopped(f"stopped; the last checkpoint is step {saved}; continue from it with: {command}")
    start_over = command.removesuffix(" --resume") + " --overwrite"
    return Stopped(f"stopped before the first checkpoint; start again with: {start_over}")


def latest_step(root: Path) -> Optional[int]:
    """The step of the checkpoint `root/latest` names (train/checkpoint.py), or None."""
    pointer = Path(root) / "latest"
    try:
        name = pointer.read_text().strip()
    except OSError:
        return None
    digits = name.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() and (Path(root) / name / "metadata.json").is_file() else None
