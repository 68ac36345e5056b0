"""What `chord compare` does with the folder of a run that an earlier compare left there.

* a run of other settings than this compare asks for (its config.resolved.yaml says), finished
  or not, is refused before anything runs: it is another experiment, and neither its numbers nor
  its files are this command's to report or to replace;
* finished (its last step evaluated): kept and recorded again;
* stopped (Ctrl-C, a killed trainer, a failure): continued from its last checkpoint with
  `chord train --resume`, which ends exactly as an uninterrupted run (tests/e2e), when nothing
  else its numbers depend on has changed since it started: the code's commit (a clean tree), the
  machine kind, torch and the trainer's threads (provenance.json, written when it started);
* otherwise (no checkpoint, no settings file from before they were written, one of those
  changed): its files are removed as `chord train --overwrite` removes them, and it starts over;
  it is compare's own output. The line that starts the run says which, and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional

from ..config import Config, ConfigError
from ..metrics.logger import read_metrics
from ..run_dir import SETTINGS_FILE, changed_settings, check_output_dir, checkpoint_root, earlier_run
from ..stop import latest_step

# what a run's numbers depend on besides its settings: the provenance fields that must not differ
# between the part before a stop and the part after it
SAME_FOR_RESUME = ("commit", "cpu", "kernels", "gpu", "torch", "trainer_threads")


def finished(run_dir: Path, steps: int) -> bool:
    """Has the run in `run_dir` logged its final evaluation (step `steps`)?"""
    path = run_dir / "metrics.jsonl"
    return path.exists() and any(r.get("step") == steps and "eval/accuracy" in r for r in read_metrics(path))


def refuse_other_settings(run_cfg: Config, label: str) -> None:
    """A run in the folder (finished or not) that trained other settings than `run_cfg` is refused,
    in one line naming the first difference (a run from before settings files were written is
    taken as it is)."""
    if not earlier_run(run_cfg):
        return
    changed = changed_settings(run_cfg)
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise ConfigError(
            "chord compare",
            label,
            f"{run_cfg.train.output_dir} holds a run of other settings ({changed[0]}{more}); "
            "give another --out, or remove that run",
        )


@dataclass
class Continuation:
    """How `chord train` goes on in the folder of an unfinished run of the grid."""

    flags: List[str] = field(default_factory=list)  # ["--resume"], ["--overwrite"], or [] (no run there)
    words: str = ""  # for compare's line: "resuming at step K, ...", "starting over (WHY)"
    carried: dict = field(default_factory=dict)  # provenance a resumed run carries over (resumed_provenance)


def continue_or_start_over(run_cfg: Config, now: Mapping[str, object]) -> Continuation:
    """`run_cfg`: an unfinished run of this grid whose settings are those asked for
    (refuse_other_settings); `now`: this process's provenance. A run that starts over has its
    files removed here, before compare writes the new provenance.json: a trainer that ended before
    it removed them itself would otherwise leave the old checkpoint beside the new provenance."""
    if not earlier_run(run_cfg):
        return Continuation()
    step = latest_step(checkpoint_root(run_cfg))
    before = _read_provenance(Path(run_cfg.train.output_dir))
    why = _why_not_resume(run_cfg, step, before, now)
    if why is None:
        return Continuation(
            ["--resume"], f"resuming at step {step}, from its checkpoint", resumed_provenance(before, step)
        )
    check_output_dir(run_cfg, resume=False, overwrite=True)
    return Continuation(["--overwrite"], f"starting over: {why}")


def _read_provenance(run_dir: Path) -> Optional[dict]:
    try:
        before = json.loads((run_dir / "provenance.json").read_text())
    except (OSError, ValueError):
        return None
    return before if isinstance(before, dict) else None


def _why_not_resume(
    run_cfg: Config, step: Optional[int], before: Optional[Mapping[str, object]], now: Mapping[str, object]
) -> Optional[str]:
    if step is None:
        return "it left no checkpoint"
    if changed_settings(run_cfg) is None:
        return f"it left no {SETTINGS_FILE} to compare settings with"
    commit = str(now.get("commit", ""))
    if "+dirty" in commit or commit.startswith("unknown"):
        return f"the code is at {commit}: a resumed run could not say which code made it"
    if before is None:
        return "it left no readable provenance.json"
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
