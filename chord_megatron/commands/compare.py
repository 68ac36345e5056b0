"""`chord compare`: the method against its baselines, same budget, same seeds, one table.

Each variant is the user's config plus a few overrides, run as its own `chord train` process
(clean Megatron state per run) into <out>/<variant>; afterwards the runs' metrics.jsonl are
read back into compare.md (final held-out accuracy, response length, entropies) and curves.png.

With `--seeds N` and/or `--lr-grid a,b,c` every variant runs at every (learning rate, seed) into
<out>/<variant>/lr<lr>/seed<seed>; compare.md then reports each variant at its best learning
rate as mean ± std over the seeds (metrics/results_report.py), and `--record FILE` appends one
record per run, with the machine, thread count and commit (provenance.json, written beside each
run when it starts), to a results file that `chord report` turns into tables. `--jobs N` runs N
trainers at once from one queue (compare_queue.py); `--shard K/N` splits a grid between processes
or machines.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from ..config import Config, ConfigError, load_config
from ..errors import ChordError
from ..metrics.provenance import provenance, trainer_threads
from ..metrics.report import comparison_table, load_runs, plot_curves, series
from ..metrics.results import append_records, run_record
from ..metrics.results_report import experiment_markdown, plot_experiment
from ..stop import EXIT_CODE, Stopped
from .compare_queue import QueuedRun, base_file, log_tail, run_progress, run_queue, warn_oversubscribed
from .compare_runs import check_kept, continue_or_start_over, finished, total_wall

start_trainer = subprocess.Popen  # starts one variant's `chord train` (tests put a stand-in here)
CONTINUES = "The same command continues the grid: finished runs are kept, stopped ones resume from their checkpoints"


class RunFailed(ChordError):
    kind = "compare"


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    cfg = load_config(args.config, overrides)
    if args.quick:
        overrides += quick_overrides(cfg)
        cfg = load_config(args.config, overrides)
    if args.seeds < 1:
        raise ConfigError("--seeds", str(args.seeds), "must be >= 1")
    if args.jobs < 1:
        raise ConfigError("--jobs", str(args.jobs), "must be >= 1")
    names = args.variants.split(",") if args.variants else None
    out = args.out or f"{cfg.train.output_dir}-compare{'-quick' if args.quick else ''}"
    per_variant = parse_variant_overrides(args.set, list(variants(cfg)))
    lrs = parse_lr_grid(args.lr_grid, per_variant) if args.lr_grid else None
    shard = parse_shard(args.shard) if args.shard else None
    command = " ".join(
        ["chord compare", args.config, *args.overrides]
        + ([f"--seeds {args.seeds}"] if args.seeds > 1 else [])
        + ([f"--lr-grid {args.lr_grid}"] if args.lr_grid else [])
        + (["--quick"] if args.quick else [])
        + [f"--set {s}" for s in args.set]
        + ([f"--variants {args.variants}"] if args.variants else [])
    )
    try:
        report = run_compare(
            args.config,
            overrides,
            cfg,
            out,
            names,
            progress=not args.no_progress,
            per_variant=per_variant,
            seeds=[cfg.train.seed + i for i in range(args.seeds)] if (args.seeds > 1 or lrs) else None,
            lrs=lrs,
            record=args.record,
            experiment=args.name or experiment_name(args.config, args.overrides, args.quick),
            command=command,  # without --shard: the shards together are this command
            quick=args.quick,
            shard=shard,
            jobs=args.jobs,
        )
    except KeyboardInterrupt:  # the trainers got it too: each saved a checkpoint and ended
        raise Stopped(f"stopped. {CONTINUES}: {shlex.join(['chord', *sys.argv[1:]])}") from None
    print(report.read_text())
    print(f"report: {report}  curves: {report.parent / 'curves.png'}")
    if args.record:
        print(f"recorded in {args.record} (tables: chord report {args.record})")
    return 0


def parse_shard(text: str) -> tuple:
    """ "2/3" -> (2, 3): the second of three processes that split one grid between them."""
    try:
        k, n = (int(x) for x in text.split("/"))
        ok = 1 <= k <= n
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError("--shard", text, "must be K/N with 1 <= K <= N, e.g. 1/2")
    return k, n


def quick_overrides(cfg: Config) -> List[str]:
    """`--quick`: a third of the steps (the variants' schedules scale with them) and three
    evaluations, enough to see which variants learn at all in a few minutes, not to rank them."""
    steps = max(3, cfg.train.steps // 3)
    return [f"train.steps={steps}", f"train.eval_every={max(1, steps // 3)}"]


def experiment_name(config_path: str, overrides: Sequence[str], quick: bool) -> str:
    return " ".join([Path(config_path).stem, *overrides] + (["(quick)"] if quick else []))


def parse_lr_grid(text: str, per_variant: Mapping[str, Sequence[str]]) -> List[str]:
    """ "1e-4,3e-4,1e-3" -> the learning rates as given (they name the run folders)."""
    lrs = [x.strip() for x in text.split(",") if x.strip()]
    for x in lrs:
        try:
            ok = float(x) > 0
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError("--lr-grid", text, f"'{x}' is not a positive number")
    if len(set(map(float, lrs))) != len(lrs):
        raise ConfigError("--lr-grid", text, "a learning rate appears twice")
    clash = [n for n, extra in per_variant.items() if any(e.startswith("optim.lr=") for e in extra)]
    if clash:
        raise ConfigError("--set", f"{clash[0]}:optim.lr", "conflicts with --lr-grid: the grid sets every variant's lr")
    return lrs


def lr_overrides(cfg: Config, lr: str) -> List[str]:
    """optim.lr, and optim.min_lr scaled with it (the config's min_lr / lr ratio), so that a decaying
    schedule keeps its shape at every rate of the grid."""
    ratio = cfg.optim.min_lr / cfg.optim.lr if cfg.optim.lr else 0.0
    return [f"optim.lr={lr}", f"optim.min_lr={float(lr) * ratio:.6g}"]


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


def with_scaled_min_lr(cfg: Config, extra: Sequence[str]) -> List[str]:
    """A variant's own `optim.lr=X` brings optim.min_lr scaled with it, as a rate of the grid
    does (lr_overrides), unless the variant sets optim.min_lr itself: `--set grpo:optim.lr=3e-4`
    and `--lr-grid 3e-4 --variants grpo` then run the same schedule."""
    own = _own(extra, "optim.lr", None, str)
    if own is None or any(o.startswith("optim.min_lr=") for o in extra):
        return list(extra)
    return [*extra, lr_overrides(cfg, own)[1]]


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
    *,
    seeds: Optional[Sequence[int]] = None,
    lrs: Optional[Sequence[str]] = None,
    record: Optional[str | Path] = None,
    experiment: Optional[str] = None,
    command: str = "",
    quick: bool = False,
    shard: Optional[tuple] = None,
    jobs: int = 1,
) -> Path:
    """Train every variant (keeping those already finished in out_dir and resuming those stopped
    part-way: compare_runs.py), then write the report.
    `per_variant`: extra overrides of single variants, applied after the variant's own.
    `seeds` / `lrs`: run each variant at every (lr, seed) (None: the config's own, one run).
    `shard` (k, n): only every n-th cell of the grid from the k-th, so that n processes (cores,
    machines) share one grid; their records, in one results file, report as one experiment.
    `jobs`: trainers at once, from one queue (compare_queue.py), each writing to <run>/train.log."""
    table = variants(cfg)
    names = list(names or table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ConfigError("--variants", ",".join(unknown), f"unknown variant; known: {', '.join(table)}")
    per_variant = {n: list(v) for n, v in (per_variant or {}).items()}
    for name, extra in per_variant.items():  # a bad key or value fails now, not after the other variants ran
        load_config(config_path, [*overrides, *table[name], *extra])
    per_variant = {n: with_scaled_min_lr(cfg, v) for n, v in per_variant.items()}
    out = Path(out_dir)
    grid = seeds is not None or lrs is not None
    # Seed-major: a grid stopped part-way has every variant and rate at the first seeds.
    cells = [
        (name, lr, seed)
        for seed in (seeds if seeds is not None else [cfg.train.seed])
        for lr in (lrs or [None])
        for name in names
    ]
    if shard:
        if not grid:
            raise ConfigError("--shard", f"{shard[0]}/{shard[1]}", "splits a grid: give --seeds N or --lr-grid")
        cells = cells[shard[0] - 1 :: shard[1]]
    # each variant's trainer's thread count (it runs in a child process, with its own --set)
    threads = {
        n: trainer_threads(_own(per_variant.get(n, []), "train.cpu_threads", cfg.train.cpu_threads, int)) for n in names
    }
    if jobs > 1:
        warn_oversubscribed(jobs, list(threads.values()))
    records = []
    first_commit = None  # the code the grid started with: a change later is said once
    to_files = jobs > 1  # several runs at once: each writes its output to its own train.log
    began = {}  # run folder -> when its trainer started

    def add_record(run_dir: Path, cell) -> None:
        records.append(_record(run_dir, cfg, cell, experiment, command, quick, overrides, per_variant))
        if record:  # each run as it is done: a grid stopped part-way keeps what it measured
            append_records(record, records[-1:])

    def start(cmd: List[str], run_cfg: Config, name: str, label: str) -> subprocess.Popen:
        nonlocal first_commit
        run_dir = Path(run_cfg.train.output_dir)
        prov = {**provenance(), "trainer_threads": threads[name]}  # the trainer's beside this process's
        # An unfinished run (stopped earlier) resumes from its checkpoint, or starts over (compare_runs.py).
        how = continue_or_start_over(run_cfg, prov)
        cmd, prov = [*cmd, *how.flags], {**prov, **how.carried}
        run_dir.mkdir(parents=True, exist_ok=True)
        began[run_dir] = time.time()
        (run_dir / "provenance.json").write_text(json.dumps(prov) + "\n")
        if first_commit is None:
            first_commit = prov["commit"]
        elif prov["commit"] != first_commit:
            # each trainer imports the tree as it is when it starts: editing the checkout under a
            # running grid mixes code versions (run a long grid from a pinned worktree)
            print(
                f"warning: the code changed since this grid started ({first_commit} -> {prov['commit']}); "
                "the runs from here on use it (each record names its commit)",
                file=sys.stderr,
            )
            first_commit = prov["commit"]
        line = f"{label}: training into {run_dir}" + (f", {how.words}" if how.words else "")
        if not to_files:
            print(line, flush=True)
            return start_trainer(cmd)
        print(f"{line} (output: {run_dir / 'train.log'})", flush=True)
        with open(run_dir / "train.log", "a") as log:
            return start_trainer(cmd, stdout=log, stderr=subprocess.STDOUT)

    def done(rc: int, run_dir: Path, cell, label: str) -> None:
        prov = json.loads((run_dir / "provenance.json").read_text())
        wall = round(time.time() - began.pop(run_dir), 1)
        (run_dir / "provenance.json").write_text(json.dumps({**prov, "wall_s": total_wall(prov, wall)}) + "\n")
        if rc == EXIT_CODE:  # Ctrl-C: the trainer saved a checkpoint, which the next compare resumes
            print(f"{label}: stopped after {wall:.0f} s, with a checkpoint", flush=True)
            return
        if rc != 0:
            print(f"{label}: failed (exit {rc}) after {wall:.0f} s", flush=True)
            if to_files:
                print(log_tail(run_dir / "train.log"), flush=True)
            return
        if to_files:
            print(f"{label}: done in {wall:.0f} s", flush=True)
        if grid:
            add_record(run_dir, cell)

    queue = []
    for i, (name, lr, seed) in enumerate(cells, 1):
        lr_label = lr if lr is not None else f"{_variant_lr(cfg, per_variant.get(name, [])):g}"
        run_dir = out / name / f"lr{lr_label}" / f"seed{seed}" if grid else out / name
        label = f"[{i}/{len(cells)}] " + name + (f" lr {lr}" if lr else "") + (f" seed {seed}" if grid else "")
        cell = [*(lr_overrides(cfg, lr) if lr else []), *([f"train.seed={seed}"] if grid else [])]
        run_overrides = [*overrides, *table[name], *per_variant.get(name, []), *cell]
        # the run's own config: the grid's with the run's overrides (cfg already has `overrides`)
        own = dict(o.split("=", 1) for o in run_overrides[len(overrides) :])
        run_cfg = cfg.replace(**{**own, "train.output_dir": str(run_dir)})
        if finished(run_dir, cfg.train.steps):
            check_kept(run_cfg, label)
            print(f"{label}: already done in {run_dir}")
            if grid:
                add_record(run_dir, (name, lr, seed))
            continue
        cmd = [
            sys.executable,
            "-m",
            "chord_megatron.cli",
            "train",
            config_path,
            *run_overrides,
            f"train.output_dir={run_dir}",
        ] + ([] if progress else ["--no-progress"])
        base = base_file(run_cfg)
        queue.append(
            QueuedRun(
                label,
                run_dir,
                base,
                partial(start, cmd, run_cfg, name, label),
                partial(done, run_dir=run_dir, cell=(name, lr, seed), label=label),
                partial(run_progress, run_dir, cfg.train.steps, base),
            )
        )
    failed = run_queue(queue, jobs, status_every_s=60.0 if to_files else None)
    if failed:
        run, rc = failed[0]
        verb = "was stopped" if rc == EXIT_CODE else "failed"
        raise RunFailed(f"{run.label} {verb} (exit {rc}); its logs and metrics are in {run.folder}. {CONTINUES}")
    report = out / "compare.md"
    if not grid:
        _plain_report(report, config_path, overrides, cfg, {n: out / n for n in names}, per_variant)
        return report
    report.write_text(experiment_markdown(records, heading="#") + "\n![curves](curves.png)\n")
    plot_experiment(records, out / "curves.png")
    return report


def _record(run_dir: Path, cfg: Config, cell, experiment, command, quick, overrides, per_variant) -> dict:
    from ..metrics.logger import read_metrics

    name, lr, seed = cell
    extra = per_variant.get(name, [])
    path = run_dir / "provenance.json"
    # A run finished by an earlier compare without a provenance file is recorded as of now, marked so.
    prov = json.loads(path.read_text()) if path.exists() else {**provenance(), "recorded_later": True}
    meta = {
        "kind": "compare-run",
        "experiment": experiment or "",
        "command": command,
        "variant": name,
        "lr": float(lr) if lr is not None else _variant_lr(cfg, extra),
        "seed": seed,
        "steps": cfg.train.steps,
        "quick": quick,
        "overrides": [*overrides, *extra],
        "eval_samples": cfg.train.eval_samples,
        "eval_prompts": cfg.data.arith_eval_prompts if cfg.data.task != "jsonl" else None,
        "temperature": cfg.rollout.temperature,
        "run_dir": str(run_dir),
        **prov,
    }
    return run_record(read_metrics(run_dir / "metrics.jsonl"), **meta)


def _variant_lr(cfg: Config, extra: Sequence[str]) -> float:
    """The rate a variant ran at: its own `--set VARIANT:optim.lr=...` (the last one) or the config's."""
    return _own(extra, "optim.lr", cfg.optim.lr, float)


def _own(extra: Sequence[str], key: str, default, kind):
    """A variant's own value of `key` (the last `key=...` of its --set overrides), else `default`."""
    own = [o.split("=", 1)[1] for o in extra if o.startswith(f"{key}=")]
    return kind(own[-1]) if own else default


def _plain_report(report: Path, config_path, overrides, cfg: Config, run_dirs, per_variant) -> None:
    """One run per variant: the table of their last values and curves.png (as before the grid)."""
    names = list(run_dirs)
    runs = load_runs(run_dirs)
    base = _base_accuracy(runs)
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
    plot_curves(runs, report.parent / "curves.png")


def _base_accuracy(runs) -> float | None:
    """The step-0 evaluation (the base model), the same in every run."""
    for records in runs.values():
        xs, ys = series(records, "eval/accuracy")
        if xs and xs[0] == 0:
            return ys[0]
    return None
