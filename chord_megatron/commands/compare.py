"""`chord compare`: the method against its baselines, same budget, same seeds, one table.

Each variant is the user's config plus a few overrides, run as its own `chord train` process
(clean Megatron state per run) into <out>/<variant>; afterwards the runs' metrics.jsonl are
read back into compare.md (final held-out accuracy, response length, entropies) and curves.png.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from ..config import Config, ConfigError, load_config
from ..metrics.report import comparison_table, load_runs, plot_curves, series
from ..run_dir import earlier_run


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    names = args.variants.split(",") if args.variants else None
    out = args.out or f"{cfg.train.output_dir}-compare"
    per_variant = parse_variant_overrides(args.set, list(variants(cfg)))
    report = run_compare(
        args.config, args.overrides, cfg, out, names, progress=not args.no_progress, per_variant=per_variant
    )
    print(report.read_text())
    print(f"report: {report}  curves: {report.parent / 'curves.png'}")
    return 0


def variants(cfg: Config) -> Dict[str, List[str]]:
    """Override sets of the compared methods, scaled to the run's train.steps (chord-spec.md).
    Everything else (model, data, optimiser, seeds, budget) is the config's, for every variant."""
    steps = cfg.train.steps
    decay = max(1, round(2 * steps / 3))
    return {
        "grpo": ["algorithm.mu.peak=0", "algorithm.mu.valley=0", "algorithm.mu.decay=0", "algorithm.mu.warmup=0"],
        "sft": [
            "algorithm.mu.peak=1",
            "algorithm.mu.valley=1",
            "algorithm.mu.decay=0",
            "algorithm.mu.warmup=0",
            "algorithm.token_weight=none",
        ],
        "sft-then-rl": [
            f"algorithm.mu.sft_steps={steps // 2}",
            "algorithm.mu.peak=0",
            "algorithm.mu.valley=0",
            "algorithm.mu.decay=0",
            "algorithm.mu.warmup=0",
            "algorithm.token_weight=none",
        ],
        # The paper's math schedule is 0.9 -> 0.05; the floor here is 0.1, which kept the tiny
        # demo model from drifting off the expert pattern once mu was low.
        "chord-mu": [
            "algorithm.mu.peak=0.9",
            "algorithm.mu.valley=0.1",
            f"algorithm.mu.decay={decay}",
            "algorithm.mu.warmup=0",
            "algorithm.token_weight=none",
        ],
        "chord-phi": [
            "algorithm.mu.peak=0.1",
            "algorithm.mu.valley=0.1",
            "algorithm.mu.decay=0",
            "algorithm.mu.warmup=0",
            "algorithm.token_weight=p1mp",
        ],
    }


def parse_variant_overrides(items: Sequence[str], known: Sequence[str]) -> Dict[str, List[str]]:
    """`--set VARIANT:key=value` items -> {variant: [key=value, ...]}, e.g. a learning rate per
    method ("grpo:optim.lr=3e-4"), since the best one differs between them."""
    out: Dict[str, List[str]] = {}
    for item in items:
        name, sep, override = item.partition(":")
        if not sep or "=" not in override:
            raise ConfigError("--set", item, "expected VARIANT:key=value, e.g. grpo:optim.lr=3e-4")
        if name not in known:
            raise ConfigError("--set", item, f"unknown variant '{name}'; known: {', '.join(known)}")
        out.setdefault(name, []).append(override)
    return out


def run_compare(
    config_path: str,
    overrides: Sequence[str],
    cfg: Config,
    out_dir: str | Path,
    names: Sequence[str] | None = None,
    progress: bool = True,
    per_variant: Optional[Mapping[str, Sequence[str]]] = None,
) -> Path:
    """Train every variant (skipping those already finished in out_dir), then write the report.
    `per_variant`: extra overrides of single variants, applied after the variant's own."""
    table = variants(cfg)
    names = list(names or table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ConfigError("--variants", ",".join(unknown), f"unknown variant; known: {', '.join(table)}")
    per_variant = {n: list(v) for n, v in (per_variant or {}).items()}
    for name, extra in per_variant.items():  # a bad key fails now, not after the other variants ran
        load_config(config_path, [*overrides, *table[name], *extra])
    out = Path(out_dir)
    for i, name in enumerate(names, 1):
        run_dir = out / name
        if _finished(run_dir, cfg.train.steps):
            print(f"[{i}/{len(names)}] {name}: already done in {run_dir}")
            continue
        print(f"[{i}/{len(names)}] {name}: training into {run_dir}", flush=True)
        cmd = [
            sys.executable,
            "-m",
            "chord_megatron.cli",
            "train",
            config_path,
            *overrides,
            *table[name],
            *per_variant.get(name, []),
            f"train.output_dir={run_dir}",
        ] + ([] if progress else ["--no-progress"])
        # An unfinished variant (stopped earlier) is compare's own output: it starts over.
        if earlier_run(cfg.replace(**{"train.output_dir": str(run_dir)})):
            cmd.append("--overwrite")
        rc = subprocess.call(cmd)
        if rc != 0:
            raise RuntimeError(f"variant {name} failed (exit {rc}); its logs and metrics are in {run_dir}")
    runs = load_runs({n: out / n for n in names})
    base = _base_accuracy(runs)
    report = out / "compare.md"
    report.write_text(
        f"# chord compare: {config_path} {' '.join(overrides)}\n\n"
        f"{cfg.train.steps} steps per variant, seed {cfg.train.seed}; held-out accuracy is avg@{cfg.train.eval_samples} "
        f"at temperature {cfg.rollout.temperature}"
        + (f"; the base model scores {base:.3f}" if base is not None else "")
        + ".\n\n"
        + "".join(f"- {n}: also {' '.join(per_variant[n])}\n" for n in names if per_variant.get(n))
        + ("\n" if any(per_variant.get(n) for n in names) else "")
        + comparison_table(runs, base_accuracy=base)
        + "\n![curves](curves.png)\n"
    )
    plot_curves(runs, out / "curves.png")
    return report


def _finished(run_dir: Path, steps: int) -> bool:
    from ..metrics.logger import read_metrics

    path = run_dir / "metrics.jsonl"
    return path.exists() and any(r.get("step") == steps and "eval/accuracy" in r for r in read_metrics(path))


def _base_accuracy(runs) -> float | None:
    """The step-0 evaluation (the base model), the same in every run."""
    for records in runs.values():
        xs, ys = series(records, "eval/accuracy")
        if xs and xs[0] == 0:
            return ys[0]
    return None
