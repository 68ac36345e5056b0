"""What `bench_logprobs.py --sweep` times, and how it reports: configurations, table, best config.

The orchestration (one worker process per configuration, the time budget, the CSV) lives in
bench_logprobs.py with the rest of the harness; this file holds only the sweep's choices and its
output format.
"""

from __future__ import annotations

import json
from typing import List, Optional

from chord_kernels.launch import SWEEP_GRID, LaunchConfig, default_launch

SWEEP_VARIANT = "triton_inplace"  # the variant training uses: gradient written over the logits


def configs(v: int, interpreted: bool, quick: bool, grid: slice = slice(None)) -> List[LaunchConfig]:
    """The library's default for this shape first (its ratio to the baseline is always reported,
    even when the budget runs out), then the grid entries that differ from it.

    `grid` picks part of SWEEP_GRID (e.g. the entries a budget cut off last time); the default
    is always measured too, so that ratios stay within one run.
    --quick (a CPU smoke test under the interpreter): the default and one config that turns on
    both new knobs, with tiles small enough that a 256 x 2048 shape takes seconds.
    """
    default = default_launch(v, interpreted)
    grid = [LaunchConfig(32, 1024, 1, num_stages=2, lane_accumulators=True)] if quick else list(SWEEP_GRID)[grid]
    return [default] + [c for c in grid if c != default]


def table(results: List[dict], baseline: Optional[str]) -> str:
    """results: [{"launch": LaunchConfig, "default": bool, "ms": {pass: p50}, "bw": frac or None,
    "speedup": fwd+bwd speed-up vs the baseline or None, "check": {..., "ok": bool}}], printed
    fastest fwd+bwd first; a configuration whose results were wrong is marked WRONG."""
    head = (
        f"{'#':>2} {'launch config':60} {'fwd ms':>8} {'bwd ms':>8} {'fwd+bwd':>8} {'BW frac':>8} "
        f"{'vs ' + (baseline or 'baseline'):>24} check"
    )
    lines = [head]
    ranked = sorted(results, key=lambda r: r["ms"].get("fwd+bwd", float("inf")))
    for i, r in enumerate(ranked, 1):
        ms = [r["ms"].get(p) for p in ("fwd", "bwd", "fwd+bwd")]
        label = r["launch"].note() + (" (default)" if r["default"] else "")
        cells = [f"{x:8.3f}" if x is not None else f"{'-':>8}" for x in ms]
        bw = f"{r['bw']:8.3f}" if r["bw"] is not None else f"{'-':>8}"
        sp = f"{r['speedup']:23.2f}x" if r["speedup"] is not None else f"{'-':>24}"
        lines.append(f"{i:2d} {label:60} {' '.join(cells)} {bw} {sp} {'ok' if r['check']['ok'] else 'WRONG'}")
    return "\n".join(lines)


def best_json(results: List[dict]) -> Optional[str]:
    """One JSON line for the fastest fwd+bwd configuration whose results were right (None if
    there is none)."""
    timed = [r for r in results if "fwd+bwd" in r["ms"] and r["check"]["ok"]]
    if not timed:
        return None
    best = min(timed, key=lambda r: r["ms"]["fwd+bwd"])
    default = next((r for r in timed if r["default"]), None)
    return json.dumps(
        {
            "best_launch": best["launch"].as_dict(),
            "p50_ms": best["ms"],
            "bandwidth_fraction_fwd+bwd": best["bw"],
            "check_vs_naive": best["check"],
            "speedup_vs_default_fwd+bwd": round(default["ms"]["fwd+bwd"] / best["ms"]["fwd+bwd"], 3)
            if default
            else None,
        }
    )
