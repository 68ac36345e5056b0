"""What the data preparation scripts (prep_openr1.py, prep_toolace.py) share: reading local
dataset files, counting what is dropped and why, writing the splits and a stats.json.

Input files: JSON Lines (*.jsonl), a JSON array (*.json, e.g. ToolACE's data.json) or Parquet
(*.parquet, as Hugging Face datasets are stored; needs pyarrow); a folder means every such file
in it, in name order. Nothing is downloaded.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Sequence

from .jsonl import DataError, write_jsonl

SUFFIXES = (".jsonl", ".json", ".parquet")


def input_files(paths: Sequence[str | Path]) -> List[Path]:
    files: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in SUFFIXES)
            if not found:
                raise DataError(f"{p}: no {'/'.join(SUFFIXES)} files in this folder")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return files


def read_rows(paths: Sequence[str | Path]) -> Iterator[Dict[str, Any]]:
    """Every record of the input files, as dicts (Parquet nulls left out)."""
    for f in input_files(paths):
        if f.suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise DataError(f"{f}: reading Parquet needs pyarrow (pip install 'chord-megatron[data]')") from None
            for batch in pq.ParquetFile(f).iter_batches(batch_size=512):
                for row in batch.to_pylist():
                    yield {k: v for k, v in row.items() if v is not None}
        elif f.suffix == ".json":
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DataError(f"{f}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
            if not isinstance(data, list):
                raise DataError(f"{f}: expected a JSON array of records")
            yield from data
        else:
            with open(f, encoding="utf-8") as fh:
                for n, line in enumerate(fh, start=1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError as e:
                            raise DataError(f"{f}:{n}:{e.colno}: not valid JSON ({e.msg})") from None


def write_outputs(
    out: str | Path, splits: Dict[str, Iterable[Dict[str, Any]]], stats: Dict[str, Any]
) -> Dict[str, int]:
    """OUT/<split>.jsonl for every split and OUT/stats.json; returns the row counts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {name: write_jsonl(out / f"{name}.jsonl", rows) for name, rows in splits.items()}
    stats = {"rows": counts, **stats}
    (out / "stats.json").write_text(json.dumps(stats, indent=1, sort_keys=True, default=_plain))
    return counts


def _plain(obj):
    if isinstance(obj, Counter):
        return dict(obj)
    raise TypeError(type(obj).__name__)


def summary(name: str, counts: Dict[str, int], wanted: Dict[str, int], dropped: Counter, out: Path) -> str:
    lines = [f"{name}: wrote " + ", ".join(f"{k}={v}" for k, v in counts.items()) + f" to {out}"]
    for split, n in wanted.items():
        if counts.get(split, 0) < n:
            lines.append(f"  warning: {split} has {counts.get(split, 0)} rows, fewer than the {n} asked for")
    if dropped:
        lines.append("  dropped: " + ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())))
    return "\n".join(lines)
