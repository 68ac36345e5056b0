"""The README's loop-speed table, generated from `chord bench loop --record`'s results file.

One row per record: the command's overrides, the machine and the thread counts of both sides, the commit, chord's
and TRL's steps/s (medians over runs, with the runs' range) and their ratio, and the held-out
accuracy both reached at the last evaluation (mean ± std over the seeds of a `--seeds` record). tests/unit/test_loop_bench_table.py keeps the
README's block equal to what the committed results file gives; `chord report
results/loop_bench.jsonl --readme README.md` writes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from .results import Stats

BEGIN, END = "<!-- loop-bench -->", "<!-- /loop-bench -->"


def read_records(path: Path) -> List[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _span(xs: List[float]) -> str:
    return f"{min(xs):.1f}–{max(xs):.1f}"


def final_accuracy_by_seed(curves: dict, run_seeds: List[int]) -> Dict[int, float]:
    """{seed: held-out accuracy at the last evaluation} from a record's per-run curves (keyed by
    run index, as JSON keeps them: strings) and the seed of each run. The runs of one seed sample
    identically, so the first run of a seed stands for all of them."""
    out: Dict[int, float] = {}
    for i, seed in enumerate(run_seeds):
        acc = curves.get(str(i), curves.get(i))
        if acc and seed not in out:
            out[seed] = acc[max(acc, key=int)]
    return out


def _last_accuracy(curves: dict, run_seeds: List[int]) -> str:
    """Mean ± std over the seeds when the record ran several, else the one run's value (the
    distinct values, should runs of one seed ever disagree)."""
    if len(set(run_seeds)) > 1:
        return f"{Stats(tuple(final_accuracy_by_seed(curves, run_seeds).values())).fmt()} ({len(set(run_seeds))} seeds)"
    finals = {round(acc[max(acc, key=int)], 3) for acc in curves.values() if acc}
    return " / ".join(f"{a:.3f}" for a in sorted(finals)) if finals else "—"


def markdown_table(records: List[dict]) -> str:
    lines = [
        "| command (`chord bench loop configs/demo.yaml …`) | CPU, torch threads (chord, TRL) | commit | chord steps/s (runs) | "
        "TRL steps/s (runs) | chord / TRL | held-out accuracy at the last step: chord, TRL |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        args = r["command"].split("configs/demo.yaml", 1)[-1].strip()
        t = r.get("trl")
        trl = f"{t['steps_per_s']:.1f} ({_span(t['steps_per_s_runs'])})" if t else "—"
        ratio = f"{r['chord_over_trl']:.2f}×" if t else "—"
        # chord's trainer may run with train.cpu_threads; TRL runs in the bench's own process
        threads = f"{r.get('chord_torch_threads', r['torch_threads'])}" + (f", {r['torch_threads']}" if t else "")
        seeds = r.get("run_seeds") or []  # absent in records from before --seeds: one seed
        acc = _last_accuracy(r["eval_accuracy"], seeds) + (
            ", " + _last_accuracy(t["eval_accuracy"], seeds) if t else ""
        )
        lines.append(
            f"| `{args}` | {r['cpu']}, {threads} | `{r['commit']}` | "
            f"{r['steps_per_s']:.1f} ({_span(r['steps_per_s_runs'])}) | {trl} | {ratio} | {acc} |"
        )
    return "\n".join(lines) + "\n"


def block_body(results: str, root: Path = Path(".")) -> str:
    """What goes between the README's markers for the results file `results` (relative to `root`)."""
    table = markdown_table(read_records(root / results))
    return f"Generated from `{results}` (`chord bench loop … --record {results}`):\n\n{table}"


def readme_block(results: str, root: Path = Path(".")) -> str:
    """The README's block, markers included (`chord report RESULTS --readme README.md` writes it)."""
    return f"{BEGIN}\n{block_body(results, root)}{END}"
