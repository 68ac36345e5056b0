"""The results file of `chord compare`: one JSON record per finished run, and its summary.

A record holds what the run measured (final held-out accuracy, the base's, response length,
entropies, thinned curves), what it was (experiment, variant, learning rate, seed, steps) and
where it came from (provenance.py: date, commit, CPU, threads, wall time). Tables and plots are
made from these records only (results_report.py), so every published number can be traced back
to a record, and the record to a command.

Records are appended; a rerun of the same (experiment, variant, lr, seed) on the same machine
kind (CPU model and kernels) supersedes the older record on reading, so that the file can grow
without the summary double-counting. The same run on another machine kind is kept beside it: that
is a reproduction (home_and_elsewhere).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .report import last, series

CURVE_KEYS = (("eval/accuracy", None), ("entropy/rl", "tokens/rl"), ("entropy/expert", "tokens/expert"))
MAX_POINTS = 100  # a curve is thinned to at most this many window means


def thinned(records: Sequence[Mapping], key: str, require: Optional[str] = None) -> List[List[float]]:
    """[[step, value], ...] of `key` over the records (only where `require` is non-zero), as means
    of consecutive windows when there are more than MAX_POINTS values; the step is the window's last."""
    pts = [
        (r["step"], float(r[key]))
        for r in records
        if isinstance(r.get(key), (int, float))
        and math.isfinite(r[key])
        and (require is None or r.get(require))
        and not (key != "eval/accuracy" and "eval/accuracy" in r)  # evaluation records carry no step entropies
    ]
    width = max(1, math.ceil(len(pts) / MAX_POINTS))
    out = []
    for i in range(0, len(pts), width):
        window = pts[i : i + width]
        out.append([window[-1][0], sum(v for _, v in window) / len(window)])
    return out


def run_record(records: Sequence[Mapping], **meta) -> dict:
    """One run's metrics.jsonl records -> its results record (meta: experiment, variant, lr, ...)."""
    xs, ys = series(records, "eval/accuracy")
    return {
        **meta,
        "final_accuracy": ys[-1] if ys else float("nan"),
        "base_accuracy": ys[0] if xs and xs[0] == 0 else float("nan"),
        "response_length": last(records, "eval/response_length"),
        "entropy_rl": last(records, "entropy/rl", "tokens/rl"),
        "entropy_expert": last(records, "entropy/expert", "tokens/expert"),
        "curves": {key: thinned(records, key, req) for key, req in CURVE_KEYS},
    }


def append_records(path: str | Path, records: Iterable[Mapping]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r, allow_nan=True) + "\n")
            n += 1
    return n


def _key(r: Mapping) -> Tuple:
    return (r.get("experiment"), r.get("variant"), r.get("lr"), r.get("seed"), *machine_kind(r))


def machine_kind(r: Mapping) -> Tuple[str, str]:
    """What makes the same run round differently: the CPU model and the kernels it ran."""
    return (str(r.get("cpu", "unknown")), str(r.get("kernels", "unknown")))


def home_and_elsewhere(records: Sequence[Mapping]) -> Tuple[List[Mapping], Dict[Tuple[str, str], List[Mapping]]]:
    """An experiment's records on the machine kind it was first recorded on (its results), and
    those of every other kind, by kind (reproductions of it)."""
    by_kind: Dict[Tuple[str, str], List[Mapping]] = {}
    for r in records:
        by_kind.setdefault(machine_kind(r), []).append(r)
    home = next(iter(by_kind), None)  # dicts keep insertion order: the first record's kind
    return by_kind.pop(home, []), by_kind


def read_results(path: str | Path) -> List[dict]:
    """The file's compare-run records, a later record of the same run replacing the earlier."""
    latest: Dict[Tuple, dict] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        if r.get("kind") == "compare-run":
            latest[_key(r)] = r
    return list(latest.values())


@dataclass(frozen=True)
class Stats:
    values: Tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else float("nan")

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1); nan for a single value: no spread is known."""
        return statistics.stdev(self.values) if self.n > 1 else float("nan")

    def fmt(self, digits: int = 3) -> str:
        if not self.values or not math.isfinite(self.mean):
            return "—"
        if self.n == 1:
            return f"{self.mean:.{digits}f} (1 seed)"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def stats(records: Sequence[Mapping], field: str) -> Stats:
    return Stats(tuple(float(r[field]) for r in records if isinstance(r.get(field), (int, float))))


def experiments(records: Sequence[Mapping]) -> List[str]:
    """Experiment names in the order they first appear."""
    return list(dict.fromkeys(r["experiment"] for r in records))


def by_variant_and_lr(records: Sequence[Mapping]) -> Dict[str, Dict[float, List[Mapping]]]:
    """{variant: {lr: [records over seeds]}}, variants in first-seen order, lrs ascending."""
    out: Dict[str, Dict[float, List[Mapping]]] = {}
    for r in records:
        out.setdefault(r["variant"], {}).setdefault(float(r["lr"]), []).append(r)
    return {v: dict(sorted(lrs.items())) for v, lrs in out.items()}


def best_lr(per_lr: Mapping[float, Sequence[Mapping]]) -> float:
    """The learning rate whose runs have the highest mean final accuracy (ties: the smaller)."""
    return max(per_lr, key=lambda lr: (stats(per_lr[lr], "final_accuracy").mean, -lr))


def ordering(means: Mapping[str, Stats]) -> str:
    """Variants from best to worst mean; ">" where the two ±1 std intervals do not overlap, "≈"
    where they do (or where a spread is unknown): the data does not separate those two."""
    ranked = sorted(means.items(), key=lambda kv: -kv[1].mean)
    parts = [f"{ranked[0][0]} ({ranked[0][1].fmt()})"] if ranked else []
    for (_, a), (name, b) in zip(ranked, ranked[1:]):
        parts.append(("> " if _separated(a, b) else "≈ ") + f"{name} ({b.fmt()})")
    return " ".join(parts)


def _separated(a: Stats, b: Stats) -> bool:
    """a above b by more than their two standard deviations (known only with 2+ seeds each)."""
    return a.n > 1 and b.n > 1 and a.mean - b.mean > a.std + b.std


def same_seed_wins(chosen: Mapping[str, Sequence[Mapping]]) -> str:
    """The two best variants by mean, seed by seed: on how many of the seeds both ran the first
    ended above the second. A seed is one base model and one data order for both, so this pairs
    away what the seeds' spread mixes in; "" with fewer than 2 shared seeds."""
    ranked = sorted(chosen, key=lambda v: -stats(chosen[v], "final_accuracy").mean)
    if len(ranked) < 2:
        return ""
    a, b = ({r["seed"]: float(r["final_accuracy"]) for r in chosen[v]} for v in ranked[:2])
    above, _, ties = seed_by_seed(a, b)
    shared = len(set(a) & set(b))
    if shared < 2:
        return ""
    return f"{ranked[0]} ends above {ranked[1]} on {above} of {shared} seeds" + (f" ({ties} tied)" if ties else "")


def seed_by_seed(a: Mapping[int, float], b: Mapping[int, float]) -> Tuple[int, int, int]:
    """On the seeds both ran ({seed: value} each): how many end with a above b, below, level."""
    shared = set(a) & set(b)
    above, below = sum(a[s] > b[s] for s in shared), sum(a[s] < b[s] for s in shared)
    return above, below, len(shared) - above - below


def separations(means: Mapping[str, Stats]) -> str:
    """Every pair the data separates, not only neighbours: ordering() chains "≈", so a wide
    variant between two others reads "a ≈ wide ≈ c" even where a is far above c. "" if none."""
    ranked = sorted(means.items(), key=lambda kv: -kv[1].mean)
    rows = []
    for i, (name, a) in enumerate(ranked):
        below = [other for other, b in ranked[i + 1 :] if _separated(a, b)]
        if below:
            rows.append(f"{name} > {', '.join(below)}")
    return "; ".join(rows)
