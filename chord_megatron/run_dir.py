"""A run's output folder: what an earlier run left there, and the guard that keeps a new run
from mixing into it.

A second `chord train` into the folder of another run would truncate its metrics.jsonl, add
TensorBoard event files next to the old ones, point the checkpoint root's `latest` at the new
run and leave the old checkpoints out of `keep_last`. So `chord train` refuses such a folder
unless told which of two things is meant: `--resume` (continue that run) or `--overwrite`
(start over: the earlier run's files are removed first, and named). Only files this project
writes there are ever removed: metrics.jsonl, the TensorBoard event files, curves.png,
config.resolved.yaml and the checkpoint root's step folders and `latest`; anything else in the
folder stays.

While a run trains, it holds its folder's lock (run_lock.py).

Each run also leaves its resolved config, config.resolved.yaml (rewritten when it resumes), so
that a `--resume` with other settings is said (`changed_settings`) and `chord compare` can tell a
stopped run it may continue from one it must start over.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from .config import PASS_THROUGH, Config, dump_config
from .errors import ChordError

_STEP_DIR = re.compile(r"^(\.tmp\.)?step_\d+$")  # checkpoint.py's step folders, and their debris
_POINTERS = ("latest", "latest.tmp")  # checkpoint.py's pointer, and its debris
_EVENTS = "events.out.tfevents.*"  # what TensorBoard's SummaryWriter writes
SETTINGS_FILE = "config.resolved.yaml"  # the run's resolved config (`chord config show` of it)
# Keys that say where a run's files go and how it reports, not what it trains: a resumed run may
# change them without a word.
_WHERE_NOT_WHAT = ("train.output_dir", "base.cache_dir", "checkpoint.", "logging.")


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
    settings: List[Path] = field(default_factory=list)

    def __bool__(self) -> bool:
        # curves.png or the settings alone (a run that wrote nothing else) are not worth refusing a run for
        return bool(self.metrics or self.events or self.checkpoints or self.pointers)

    def files(self) -> List[Path]:
        return [*self.metrics, *self.events, *self.checkpoints, *self.pointers, *self.curves, *self.settings]

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
    run.settings = [p for p in (out / SETTINGS_FILE,) if p.is_file()]
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


def save_settings(cfg: Config) -> None:
    """Write the run's resolved config beside its metrics (rank 0, as the run starts or resumes).
    `chord train <output_dir>/config.resolved.yaml` trains the same thing again."""
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{SETTINGS_FILE}.tmp"
    tmp.write_text(dump_config(cfg))
    tmp.replace(out / SETTINGS_FILE)


def changed_settings(cfg: Config) -> Optional[List[str]]:
    """The settings of `cfg` that differ from those the run in its output folder saved, each as
    "key: old -> new"; None when the folder holds no readable settings file. Keys that only one
    side has (another version of this code) are not compared."""
    try:
        saved = yaml.safe_load((Path(cfg.train.output_dir) / SETTINGS_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(saved, dict):
        return None
    old, new = _flat(saved), _flat(cfg.to_dict())
    return [
        f"{k}: {old[k]!r} -> {new[k]!r}"
        for k in new
        if k in old and old[k] != new[k] and not k.startswith(_WHERE_NOT_WHAT)
    ]


def warn_if_resumed_with_other_settings(cfg: Config) -> None:
    """`--resume` with settings other than the run's (a longer train.steps, say) is allowed and
    said once: the records before and after the resume then come from different settings."""
    changed = changed_settings(cfg)
    if changed:
        print(
            f"warning: --resume with other settings than {cfg.train.output_dir}'s run: {'; '.join(changed)}",
            file=sys.stderr,
        )


def _flat(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{"train": {"steps": 3}} -> {"train.steps": 3}; a pass-through section (megatron:, sglang:)
    is one value, so that a key it gains or loses is a change."""
    out: Dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping) and not (not prefix and k in PASS_THROUGH):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
