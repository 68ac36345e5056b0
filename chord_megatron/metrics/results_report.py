"""Tables and curves made from a results file (results.py), never typed by hand.

`chord report results/demo.jsonl --markdown` prints them; `--doc FILE` writes a page with the
curves beside it; `--readme README.md` replaces the block between the markers below.
tests/unit/test_results_report.py checks that the README's block is what this module makes of
the committed results file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

from .results import (
    Stats,
    best_lr,
    by_variant_and_lr,
    experiments,
    home_and_elsewhere,
    ordering,
    same_seed_wins,
    separations,
    stats,
)

BEGIN, END = "<!-- demo-results -->", "<!-- /demo-results -->"
VARIANTS = ("grpo", "sft", "sft-then-rl", "chord-mu", "chord-phi")  # chord compare's, when --variants is not given


def _lr(lr: float) -> str:
    """1e-4, 3e-4, 2.5e-3: the way learning rates are written on command lines."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _provenance(records: Sequence[Mapping]) -> str:
    """The records' dates, commits, machine (one kind: home_and_elsewhere splits by kind), threads
    and, where every run recorded it, their wall times summed: what the experiment cost."""

    def uniq(field):
        return sorted({str(r.get(field, "unknown")) for r in records})

    dates = sorted(str(r.get("date", "")) for r in records if r.get("date"))
    if not dates:
        span = "date not recorded"
    else:
        span = f"{dates[0][:10]} to {dates[-1][:10]}" if dates[0][:10] != dates[-1][:10] else dates[0][:10]
    kinds = sorted({str(r["kernels"]) for r in records if r.get("kernels")})
    kernels = f" (kernels {' / '.join(kinds)})" if kinds else ""
    # the trainers' threads where recorded (compare's runs), else the recording process's
    threads = uniq("trainer_threads") if all("trainer_threads" in r for r in records) else uniq("torch_threads")
    walls = [r.get("wall_s") for r in records]
    cost = (
        f"; {sum(walls) / 60:.0f} min of runs (their wall times summed, base stages included)"
        if records and all(isinstance(w, (int, float)) for w in walls)
        else ""
    )
    return (
        f"{len(records)} run{'s' if len(records) != 1 else ''}, {span}, commit {', '.join(uniq('commit'))}; "
        f"{' / '.join(uniq('cpu'))}{kernels}, "
        f"{', '.join(uniq('cores'))} cores, {', '.join(threads)} torch thread{'' if threads == ['1'] else 's'}{cost}"
    )


def experiment_markdown(records: Sequence[Mapping], heading: str = "###") -> str:
    """One experiment: the tuned table, the ordering it shows, the learning-rate grid, provenance;
    then its reproductions, where the same runs were recorded on another CPU kind or kernels."""
    name = records[0]["experiment"]
    records, elsewhere = home_and_elsewhere(records)
    grid = by_variant_and_lr(records)
    best = {v: best_lr(per_lr) for v, per_lr in grid.items()}
    chosen = {v: grid[v][best[v]] for v in grid}
    seeds = sorted({r["seed"] for r in records})
    lrs = sorted({float(r["lr"]) for r in records})
    base = stats([{"b": r["base_accuracy"]} for r in _one_per_seed(records)], "b")
    first = records[0]
    # An experiment may be recorded by several commands (e.g. more variants run later under the
    # same --name): each is shown, and the runs planned are theirs together (grid_coverage).
    full_grid = all(len(per_lr) == len(lrs) for per_lr in grid.values())
    chosen_from = (
        f"at the learning rate of the grid {{{', '.join(map(_lr, lrs))}}} with the best mean"
        if full_grid
        else f"at the best mean of the rates it ran of {{{', '.join(map(_lr, lrs))}}} (the grid below shows which)"
    )
    quick = " (`--quick`: a smoke reading, not a result)" if first.get("quick") else ""
    out = [
        f"{heading} {name}{quick}",
        "",
        *_command_lines(records),
        "",
        f"{first.get('steps')} steps per run; held-out accuracy is avg@{first.get('eval_samples')} at temperature "
        f"{first.get('temperature')} on {first.get('eval_prompts')} problems after the last step, mean ± std "
        f"over seeds {', '.join(map(str, seeds))} (each seed its own base model); each variant {chosen_from}, "
        f"chosen on the same held-out problems for every variant alike. Base model: {base.fmt()}.",
        "",
        "| variant | best lr | held-out accuracy | Δ vs base | response length | entropy (on-policy) | entropy (expert) |",
        "|---|---|---|---|---|---|---|",
    ]
    accuracy: Dict[str, Stats] = {}
    for v, runs in chosen.items():
        acc = stats(runs, "final_accuracy")
        accuracy[v] = acc
        delta = Stats(tuple(r["final_accuracy"] - r["base_accuracy"] for r in runs))
        out.append(
            f"| {v} | {_lr(best[v])} | {acc.fmt()} | {_signed(delta)} | {stats(runs, 'response_length').fmt(1)} | "
            f"{stats(runs, 'entropy_rl').fmt()} | {stats(runs, 'entropy_expert').fmt()} |"
        )
    coverage = grid_coverage(records)
    if coverage and coverage[0] < coverage[1]:
        out += [
            "",
            f"**Partial grid: {coverage[0]} of the {coverage[1]} runs the command asks for are recorded**; a variant's best "
            "lr is the best of the rates it has run, and a value marked (1 seed) has no spread yet.",
        ]
    out += ["", f'Ordering (">": ±1 std apart; "≈": not separated by these seeds): {ordering(accuracy)}.']
    pairs = separations(accuracy)
    out += [f"Every pair ±1 std apart: {pairs or 'none'}."]
    paired = same_seed_wins(chosen)
    if paired:
        out += [f"The two best by mean, seed by seed (one base model per seed for both): {paired}."]
    if len(lrs) > 1:
        out += ["", "| variant | " + " | ".join(f"lr {_lr(lr)}" for lr in lrs) + " |", "|---" * (len(lrs) + 1) + "|"]
        for v, per_lr in grid.items():
            cells = [stats(per_lr[lr], "final_accuracy").fmt() if lr in per_lr else "not run" for lr in lrs]
            out.append(f"| {v} | " + " | ".join(cells) + " |")
    out += ["", f"Measured: {_provenance(records)}."]
    for runs in elsewhere.values():
        out += ["", *_reproduction(grid, best, runs)]
    return "\n".join(out) + "\n"


def _reproduction(grid: Mapping[str, Mapping[float, Sequence[Mapping]]], best, runs: Sequence[Mapping]) -> List[str]:
    """The same cells run on another machine kind, against the table above: a reproduction holds
    where the mean there lies within the mean ± 1 std here (the spread the README states)."""
    cpu, kernels = runs[0].get("cpu", "unknown"), runs[0].get("kernels", "unknown")
    out = [
        f'Reproduced on {cpu} (kernels {kernels}): the same runs; "within" = the mean there lies '
        "within the mean ± 1 std here.",
        "",
        *_command_lines(runs),
        "",
        "| variant | lr | seeds there | accuracy there | here, all seeds | here, the same seeds | within |",
        "|---|---|---|---|---|---|---|",
    ]
    for v, per_lr in by_variant_and_lr(runs).items():
        for lr, there in per_lr.items():
            here = grid.get(v, {}).get(lr, [])
            seeds = {r["seed"] for r in there}
            acc, ref = stats(there, "final_accuracy"), stats(here, "final_accuracy")
            same = stats([r for r in here if r["seed"] in seeds], "final_accuracy")
            within = "—" if ref.n < 2 else ("yes" if abs(acc.mean - ref.mean) <= ref.std else "**no**")
            marker = "" if lr == best.get(v) else " (not the table's lr)"
            out.append(
                f"| {v} | {_lr(lr)}{marker} | {', '.join(map(str, sorted(seeds)))} | {acc.fmt()} | {ref.fmt()} | "
                f"{same.fmt()} | {within} |"
            )
    return out + ["", f"Measured there: {_provenance(runs)}."]


def grid_coverage(records: Sequence[Mapping]) -> Tuple[int, int] | None:
    """(runs recorded, runs planned) of an experiment. Each command plans its variants x learning
    rates x N seeds; a (variant, lr) that several commands plan (a grid rerun, or extended under
    the same --name) counts once, with the most seeds any of them asks for. None: a command that
    cannot be read."""
    wanted: Dict[Tuple[str, float], int] = {}
    for first in _first_per_command(records):
        words = str(first.get("command", "")).split()

        def after(flag):
            return words[words.index(flag) + 1] if flag in words[:-1] else None

        try:
            n_seeds = int(after("--seeds") or 1)
            grid = [float(x) for x in after("--lr-grid").split(",")] if after("--lr-grid") else None
        except ValueError:
            return None
        own = [r for r in records if r.get("command") == first.get("command")]
        for v in after("--variants").split(",") if after("--variants") else VARIANTS:
            # without --lr-grid each variant ran at the config's rate (or its own --set one)
            lrs = grid or sorted({float(r["lr"]) for r in own if r["variant"] == v} or {float(first["lr"])})
            for lr in lrs:
                wanted[(v, lr)] = max(wanted.get((v, lr), 0), n_seeds)
    have = by_variant_and_lr(records)
    recorded = sum(min(n, len(have.get(v, {}).get(lr, []))) for (v, lr), n in wanted.items())
    return recorded, sum(wanted.values())


def _command_lines(records: Sequence[Mapping]) -> List[str]:
    """Each command the records came from, one per line (markdown's "  " line break between)."""
    commands = [f"`{r.get('command', '')}`" for r in _first_per_command(records)]
    return [c + ("  " if i < len(commands) - 1 else "") for i, c in enumerate(commands)]


def _first_per_command(records: Sequence[Mapping]) -> List[Mapping]:
    """One record per command, the commands in the order they were first run (by date)."""
    out: Dict[str, Mapping] = {}
    for r in sorted(records, key=lambda r: str(r.get("date", ""))):  # stable: undated keep file order
        out.setdefault(str(r.get("command", "")), r)
    return list(out.values())


def _signed(s: Stats) -> str:
    text = s.fmt()
    return text if text == "—" or s.mean < 0 else "+" + text


def _one_per_seed(records: Sequence[Mapping]) -> List[Mapping]:
    out: Dict[int, Mapping] = {}
    for r in records:
        if isinstance(r.get("base_accuracy"), (int, float)) and math.isfinite(r["base_accuracy"]):
            out.setdefault(r["seed"], r)
    return list(out.values())


def split_experiments(records: Sequence[Mapping]) -> Dict[str, List[Mapping]]:
    return {name: [r for r in records if r["experiment"] == name] for name in experiments(records)}


def plot_experiment(records: Sequence[Mapping], out_path: str | Path) -> Path:
    """Held-out accuracy, on-policy and expert entropy against step: one line per variant at its
    best learning rate, the mean over seeds, shaded ±1 std where there are several seeds (the
    machine kind of the experiment's table; reproductions elsewhere are not drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = by_variant_and_lr(home_and_elsewhere(records)[0])
    panels = (
        ("eval/accuracy", "held-out accuracy"),
        ("entropy/rl", "entropy (on-policy)"),
        ("entropy/expert", "entropy (expert)"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(16, 4), squeeze=False)
    for i, (v, per_lr) in enumerate(grid.items()):
        lr = best_lr(per_lr)
        for ax, (key, title) in zip(axes[0], panels):
            xs, mean, std = _mean_curve([r["curves"].get(key, []) for r in per_lr[lr]])
            if not xs:
                continue
            ax.plot(xs, mean, color=f"C{i}", label=f"{v} (lr {_lr(lr)})")
            if any(s > 0 for s in std):
                ax.fill_between(
                    xs,
                    [m - s for m, s in zip(mean, std)],
                    [m + s for m, s in zip(mean, std)],
                    color=f"C{i}",
                    alpha=0.15,
                )
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=max(1, len(labels)), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def _mean_curve(curves: Sequence[Sequence[Sequence[float]]]):
    """Mean and std over seeds at the steps every seed has (runs of one experiment share them)."""
    maps = [{s: v for s, v in c} for c in curves if c]
    if not maps:
        return [], [], []
    steps = sorted(set.intersection(*(set(m) for m in maps)))
    mean = [sum(m[s] for m in maps) / len(maps) for s in steps]
    std = [Stats(tuple(m[s] for m in maps)).std if len(maps) > 1 else 0.0 for s in steps]
    return steps, mean, std


def replace_block(text: str, block: str, where: str, begin: str = BEGIN, end: str = END) -> str:
    """`text` with the part between the markers (the demo results' by default) replaced by
    `block`; refused without them."""
    if begin not in text or end not in text:
        raise ValueError(f"{where} has no {begin} ... {end} markers: add them where the results go")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{block.strip()}\n{end}{tail}"
