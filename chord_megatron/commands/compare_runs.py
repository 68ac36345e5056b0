"""What `chord compare` does with the folder of a run that an earlier compare left there.

* finished (its last step evaluated): kept and recorded again, unless it trained other settings
  than this compare asks for (its config.resolved.yaml says), which is refused: its numbers
  would be reported under a command that did not make them;
* stopped (Ctrl-C, a killed trainer, a failure): continued from its last checkpoint with
  `chord train --resume`, which ends exactly as an uninterrupted run (tests/e2e), when nothing the
  run's numbers depend on has changed since it started: its settings, the code's commit (a clean
  tree) and the CPU kind (provenance.json, written when it started);
* anything else it left (no checkpoint, or one of those changed): started over with --overwrite;
  it is compare's own output. The line that starts the run says which, and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional

from ..config import Config, ConfigError
from ..metrics.logger import read_metrics
from ..run_dir import SETTINGS_FILE, changed_settings, checkpoint_root, earlier_run
from ..stop import latest_step

# what a run's numbers depend on besides its settings: the provenance fields that must not differ
# between the part before a stop and the part after it
SAME_FOR_RESUME = ("commit", "cpu", "kernels")


def finished(run_dir: Path, steps: int) -> bool:
    """Has the run in `run_dir` logged its final evaluation (step `steps`)?"""
    path = run_dir / "metrics.jsonl"
    return path.exists() and any(r.get("step") == steps and "eval/accuracy" in r for r in read_metrics(path))


def check_kept(run_cfg: Config, label: str) -> None:
    """A finished run is kept only if it trained the settings asked for now (a run from before
    settings files were written is kept as it is)."""
    changed = changed_settings(run_cfg)
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise ConfigError(
            "chord compare",
            label,
            f"{run_cfg.train.output_dir} holds a finished run of other settings ({changed[0]}{more}); "
            "give another --out, or remove that run",
        )


@dataclass
class Continuation:
    """How `chord train` goes on in the folder of an unfinished run of the grid."""

    flags: List[str] = field(default_factory=list)  # ["--resume"], ["--overwrite"], or [] (no run there)
    words: str = ""  # for compare's line: "resuming at step K, ...", "starting over (WHY)"
    carried: dict = field(default_factory=dict)  # provenance a resumed run carries over (resumed_provenance)


def continue_or_start_over(run_cfg: Config, now: Mapping[str, object]) -> Continuation:
    """`run_cfg`: an unfinished run of this grid; `now`: this process's provenance."""
    if not earlier_run(run_cfg):
        return Continuation()
    step = latest_step(checkpoint_root(run_cfg))
    why = _why_not_resume(run_cfg, step, now)
    if why is not None:
        return Continuation(["--overwrite"], f"starting over: {why}")
    before = json.loads((Path(run_cfg.train.output_dir) / "provenance.json").read_text())
    return Continuation(["--resume"], f"resuming at step {step}, from its checkpoint", resumed_provenance(before, step))


def _why_not_resume(run_cfg: Config, step: Optional[int], now: Mapping[str, object]) -> Optional[str]:
    if step is None:
        return "it left no checkpoint"
    changed = changed_settings(run_cfg)
    if changed is None:
        return f"it left no {SETTINGS_FILE} to compare settings with"
    if changed:
        return f"its settings differ: {'; '.join(changed)}"
    commit = str(now.get("commit", ""))
    if "+dirty" in commit or commit.startswith("unknown"):
        return f"the code is at {commit}: a resumed run could not say which code made it"
    try:
        before = json.loads((Path(run_cfg.train.output_dir) / "provenance.json").read_text())
    except (OSError, ValueError):
        return "it left no provenance.json"
    for key in SAME_FOR_RESUME:
        if before.get(key) != now.get(key):
            return f"its {key} was {before.get(key)}, now {now.get(key)}"
    return None


def resumed_provenance(before: Mapping[str, object], step: int) -> dict:
    """The provenance fields a resumed run carries over from its earlier part(s): the steps it
    resumed at, and the wall time before (None when an earlier part's end was not seen)."""
    return {
        "resumed_at": [*before.get("resumed_at", []), step],
        "wall_s_before": before.get("wall_s") if isinstance(before.get("wall_s"), (int, float)) else None,
    }


def total_wall(prov: Mapping[str, object], wall: float) -> Optional[float]:
    """A run's wall time once its trainer has ended after `wall` seconds: with a resumed run's
    earlier parts, or None when the end of one of them was not seen (compare itself was killed)."""
    if "resumed_at" not in prov:
        return wall
    before = prov.get("wall_s_before")
    return None if before is None else round(wall + before, 1)
