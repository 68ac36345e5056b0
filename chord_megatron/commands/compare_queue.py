"""`chord compare --jobs N`: a grid's training runs, N at a time, from one queue.

One process starts the next run as soon as one ends, each writing its output to <run>/train.log,
and says what is running once a minute. Static shards (`--shard K/N`) each train every base model
their runs need, so two shards meeting the same seed train its base twice; the queue never starts
a run whose base model a running run is still training (it would train the same weights again):
such a run waits and a run of another seed goes first, and once the base is cached the waiting
ones start from it. Runs that train a new base go first, so that no seed's base is left to the end
of the grid, where it would hold back that seed's other runs while a core idles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from ..config import Config

POLL_S = 0.5  # how often the queue looks for ended runs: a run lasts minutes


@dataclass(eq=False)  # each run is itself (a key of the running set), not equal to a lookalike
class QueuedRun:
    label: str  # "[3/15] grpo seed 1235", for compare's lines
    folder: Path  # the run's output folder (its logs and metrics)
    base: Optional[Path]  # the base model's cache file the run trains first if absent; None: no base stage
    start: Callable[[], subprocess.Popen]
    done: Callable[[int], None]  # with the exit status, once the run has ended
    where: Callable[[], str] = lambda: ""  # how far it is, e.g. "step 340/600", for the periodic line


def waits_for_base(run: QueuedRun, running: Sequence[QueuedRun]) -> bool:
    """Would `run` train a base model that a running run is training now?"""
    if run.base is None or run.base.exists():
        return False
    return any(r.base == run.base for r in running)


def next_run(pending: Sequence[QueuedRun], running: Sequence[QueuedRun]) -> Optional[QueuedRun]:
    """The first pending run that trains a base model nobody trains yet, else the first that can
    start. Base stages first: a base is the longest part of its seed's first run and holds back the
    seed's other runs, so started late it leaves a core idle at the end of the grid."""
    ready = [r for r in pending if not waits_for_base(r, running)]
    fresh = [r for r in ready if r.base is not None and not r.base.exists()]
    return (fresh or ready or [None])[0]


def run_queue(
    runs: Sequence[QueuedRun], jobs: int, *, poll_s: Optional[float] = None, status_every_s: Optional[float] = 60.0
) -> List[Tuple[QueuedRun, int]]:
    """Run `runs` in their order, up to `jobs` at a time. After a failure no new run starts; the
    running ones end as they would (what they measure is kept). Returns the failed runs with
    their exit statuses. On Ctrl-C (which the terminal sends the runs as well: each checkpoints
    and stops) it waits for them to end, hands each its exit status, then raises KeyboardInterrupt."""
    poll_s = POLL_S if poll_s is None else poll_s
    pending, running, failed = list(runs), {}, []  # running: QueuedRun -> its process
    last_status = time.monotonic()
    try:
        while pending or running:
            while pending and not failed and len(running) < jobs:
                nxt = next_run(pending, list(running))
                if nxt is None:
                    break
                pending.remove(nxt)
                running[nxt] = nxt.start()
            ended = [(r, rc) for r, p in running.items() if (rc := p.poll()) is not None]
            for run, rc in ended:
                del running[run]
                run.done(rc)
                if rc != 0:
                    failed.append((run, rc))
            if failed and not running:
                break
            if not ended:
                time.sleep(poll_s)
            if status_every_s is not None and running and time.monotonic() - last_status >= status_every_s:
                last_status = time.monotonic()
                done = len(runs) - len(pending) - len(running)
                now = ", ".join(f"{r.label} {r.where()}".rstrip() for r in running)
                print(f"running: {now}; {done} of {len(runs)} ended", flush=True)
    except KeyboardInterrupt:
        for run, proc in running.items():
            run.done(proc.wait())
        raise
    return failed


def log_tail(path: Path, lines: int = 15) -> str:
    """The end of a run's log, shown when it fails (its output went to the file, not the terminal)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def base_file(cfg: Config) -> Optional[Path]:
    """The cached base model that a run of `cfg` trains first when it is absent (as
    demo/base_model.base_weights decides), or None when the run has no base stage."""
    if cfg.model.hf_path or cfg.base.steps == 0:
        return None
    from ..demo.base_model import cache_path

    return cache_path(cfg)


def run_progress(run_dir: Path, steps: int, base: Optional[Path] = None) -> str:
    """How far a running trainer is, from the last record of its metrics log."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return "(training its base model)" if base is not None and not base.exists() else "(starting)"
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    try:
        return f"step {json.loads(lines[-1])['step']}/{steps}"
    except (IndexError, KeyError, ValueError):
        return ""


def warn_oversubscribed(jobs: int, threads: Sequence[int]) -> None:
    """N trainers on more threads than the machine has cores slow each other down (and make
    their wall times say little): say so once, before the grid starts. `threads`: the torch
    threads of each variant's trainer."""
    cores = os.cpu_count() or 1
    most = max(threads)
    if jobs * most > cores:
        print(
            f"warning: --jobs {jobs} trainers of up to {most} torch threads each on {cores} cores: they slow each "
            f"other down (train.cpu_threads={max(1, cores // jobs)} fits)",
            file=sys.stderr,
        )
