"""`chord compare --jobs N`: a grid's training runs, N at a time, from one queue.

Static shards (`--shard K/N`) finish unevenly, and each trains every base model its runs need:
two shards meeting the same seed both train its base, while a run of another seed could have
used the core. The queue starts the next run as soon as one ends, and never starts a run whose
base model is still being trained by a running one (it would train the same weights again);
such a run waits, and a run of another seed goes first. Once the running one has cached the base,
the waiting ones start from it.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

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
    and stops) it waits for them to end, then raises KeyboardInterrupt."""
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
            ended = [(r, p.poll()) for r, p in running.items() if p.poll() is not None]
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
        for proc in running.values():
            proc.wait()
        raise
    return failed


def log_tail(path: Path, lines: int = 15) -> str:
    """The end of a run's log, shown when it fails (its output went to the file, not the terminal)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])
