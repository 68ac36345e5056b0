"""Run metrics: one JSON line per logged step, the same scalars in TensorBoard.

metrics.jsonl is the record of a run: `chord compare` and the plots read it back. A run
resumed at step k recomputes everything from step k on, so the records of steps >= k (written
before the crash) are dropped first and the file reads exactly as an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional


class MetricsLogger:
    def __init__(
        self, out_dir: str | Path, *, jsonl: bool = True, tensorboard: bool = True, resume_step: Optional[int] = None
    ):  # keep records with step < resume_step
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        self._file = None
        if jsonl:
            if resume_step is None:
                self.path.write_text("")
            else:
                self._truncate_after(resume_step)
            self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # pragma: no cover - tensorboard is a dependency
                warnings.warn(f"TensorBoard logging off: {e}")
            else:
                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", -1) < step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        record = {"step": step}
        for k, v in metrics.items():
            if hasattr(v, "item"):
                v = v.item()
            record[k] = v
        if self._file is not None:
            self._file.write(json.dumps(record, allow_nan=True) + "\n")
            self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | Path) -> List[Dict[str, Any]]:
    """The records of a metrics.jsonl; a torn last line (a crash mid-write) is ignored."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
