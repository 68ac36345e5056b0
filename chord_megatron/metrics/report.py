"""Reports over finished runs: a markdown table and PNG curves, read back from metrics.jsonl.

Used by `chord compare` (one run per variant, same budget and seeds) and after `chord train`.
Nothing here trains; it only reads what runs wrote.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

from .logger import read_metrics
from .table import CURVES


def last(records: Sequence[Mapping], key: str, require: str | None = None) -> float:
    """The last finite value of `key` (in a record where `require`, if given, is non-zero)."""
    for r in reversed(records):
        if require is not None and not r.get(require):
            continue
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            return float(v)
    return float("nan")


def series(records: Sequence[Mapping], key: str):
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def comparison_table(runs: Mapping[str, Sequence[Mapping]], base_accuracy: float | None = None) -> str:
    """Markdown: one row per run with its final held-out accuracy, response length, entropies."""
    lines = [
        "| variant | held-out accuracy | Δ vs base | response length | entropy (on-policy) | entropy (expert) |",
        "|---|---|---|---|---|---|",
    ]
    for name, records in runs.items():
        acc = last(records, "eval/accuracy")
        delta = f"{acc - base_accuracy:+.3f}" if base_accuracy is not None and math.isfinite(acc) else "—"
        lines.append(
            f"| {name} | {_fmt(acc)} | {delta} | {_fmt(last(records, 'eval/response_length'), 1)} | "
            f"{_fmt(last(records, 'entropy/rl', 'tokens/rl'))} | {_fmt(last(records, 'entropy/expert', 'tokens/expert'))} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(v: float, digits: int = 3) -> str:
    return "—" if not math.isfinite(v) else f"{v:.{digits}f}"


def plot_curves(runs: Mapping[str, Sequence[Mapping]], out_path: str | Path, keys=CURVES) -> Path:
    """One panel per metric, one line per run; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training nodes or CI
    import matplotlib.pyplot as plt

    present = [(k, title) for k, title in keys if any(series(r, k)[0] for r in runs.values())]
    if not present:
        raise ValueError("plot_curves: none of the runs logged any of " + ", ".join(k for k, _ in keys))
    cols = 2 if len(present) > 1 else 1
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.4 * rows), squeeze=False)
    colors = {name: f"C{i}" for i, name in enumerate(runs)}  # one colour per run in every panel
    for ax, (key, title) in zip(axes.flat, present):
        for name, records in runs.items():
            xs, ys = series(records, key)
            if xs:
                ax.plot(xs, ys, label=name, color=colors[name], marker="o" if len(xs) < 12 else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colors[n], label=n) for n in runs]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def load_runs(run_dirs: Mapping[str, str | Path]) -> Dict[str, List[Mapping]]:
    return {name: read_metrics(Path(d) / "metrics.jsonl") for name, d in run_dirs.items()}
