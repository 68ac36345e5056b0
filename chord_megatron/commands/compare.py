"""`chord compare`: the method against its baselines, same budget, same seeds, one table.

Each variant is the user's config plus a few overrides (compare_variants.py), run as its own `chord train` process
(clean Megatron state per run) into <out>/<variant>; afterwards the runs' metrics.jsonl are
read back into compare.md (final held-out accuracy, response length, entropies) and curves.png.

With `--seeds N` and/or `--lr-grid a,b,c` every variant runs at every (learning rate, seed) into
<out>/<variant>/lr<lr>/seed<seed>; compare.md then reports each variant at its best learning
rate as mean ± std over the seeds (metrics/results_report.py), and `--record FILE` appends one
record per run, with the machine, thread count and commit (provenance.json, written beside each
run when it starts), to a results file that `chord report` turns into tables. `--jobs N` runs N
trainers at once from one queue (compare_queue.py); `--shard K/N` splits a grid between processes
or machines. Run again, the same command keeps the finished runs and resumes the stopped ones
(compare_runs.py).
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
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..config import Config, ConfigError, load_config
from ..errors import ChordError
from ..metrics.provenance import provenance, trainer_threads
from ..metrics.report import comparison_table, load_runs, plot_curves, series
from ..metrics.results import append_records, run_record
from ..metrics.results_report import experiment_markdown, plot_experiment
from ..run_dir import checkpoint_root, earlier_run
from ..run_lock import refuse_if_in_use
from ..stop import EXIT_CODE, Stopped, latest_step
from .compare_queue import QueuedRun, base_file, log_tail, run_progress, run_queue, warn_oversubscribed
from .compare_runs import continue_or_start_over, finished, refuse_other_settings, total_wall
from .compare_variants import (
    lr_overrides,
    own_value,
    parse_lr_grid,
    parse_variant_overrides,
    quick_overrides,
    variant_lr,
    variants,
    with_scaled_min_lr,
)

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


def experiment_name(config_path: str, overrides: Sequence[str], quick: bool) -> str:
    return " ".join([Path(config_path).stem, *overrides] + (["(quick)"] if quick else []))


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
    if cfg.checkpoint.dir:  # one folder for every run's checkpoints: each --overwrite would delete the others'
        raise ConfigError(
            "checkpoint.dir",
            cfg.checkpoint.dir,
            "chord compare keeps each run's checkpoints in its own folder: leave it unset",
        )
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
        n: trainer_threads(own_value(per_variant.get(n, []), "train.cpu_threads", cfg.train.cpu_threads, int))
        for n in names
    }
    if jobs > 1:
        warn_oversubscribed(jobs, list(threads.values()))
    to_files = jobs > 1  # several runs at once: each writes its output to its own train.log
    describe = partial(
        _record,
        cfg=cfg,
        experiment=experiment,
        command=command,
        quick=quick,
        overrides=overrides,
        per_variant=per_variant,
    )
    runs = GridRuns(threads, to_files, describe if grid else None, record)

    queue, kept, stopped = [], 0, 0
    for i, (name, lr, seed) in enumerate(cells, 1):
        lr_label = lr if lr is not None else f"{variant_lr(cfg, per_variant.get(name, [])):g}"
        run_dir = out / name / f"lr{lr_label}" / f"seed{seed}" if grid else out / name
        label = f"[{i}/{len(cells)}] " + name + (f" lr {lr}" if lr else "") + (f" seed {seed}" if grid else "")
        cell = [*(lr_overrides(cfg, lr) if lr else []), *([f"train.seed={seed}"] if grid else [])]
        run_overrides = [*overrides, *table[name], *per_variant.get(name, []), *cell]
        # the run's own config: the grid's with the run's overrides (cfg already has `overrides`)
        own = dict(o.split("=", 1) for o in run_overrides[len(overrides) :])
        run_cfg = cfg.replace(**{**own, "train.output_dir": str(run_dir)})
        # before anything runs: a run another process is training (this command run twice) is not
        # touched, nor one of other settings
        refuse_if_in_use(run_cfg)
        refuse_other_settings(run_cfg, label)
        if finished(run_dir, cfg.train.steps):
            print(f"{label}: already done in {run_dir}")
            kept += 1
            runs.add_record(run_dir, (name, lr, seed))
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
        stopped += bool(earlier_run(run_cfg))
        base = base_file(run_cfg)
        queue.append(
            QueuedRun(
                label,
                run_dir,
                base,
                partial(runs.start, cmd, run_cfg, name, label),
                partial(runs.done, run_dir=run_dir, cell=(name, lr, seed), label=label),
                partial(run_progress, run_dir, cfg.train.steps, base),
            )
        )
    if kept or stopped:  # this command ran here before: what it finds, before it goes on
        print(
            f"{out}: {kept} of {len(cells)} runs done (kept), {stopped} stopped part-way (each resumes or starts "
            f"over, as its line says), {len(cells) - kept - stopped} not started",
            flush=True,
        )
    failed = run_queue(queue, jobs, status_every_s=60.0 if to_files else None)
    if failed:
        run, rc = failed[0]
        verb = "was stopped" if rc == EXIT_CODE else "failed"
        way_on = (
            f"It failed resuming from its checkpoint: remove {run.folder} to start it over"
            if runs.failed_resuming(run.folder, rc)
            else CONTINUES
        )
        raise RunFailed(f"{run.label} {verb} (exit {rc}); its logs and metrics are in {run.folder}. {way_on}")
    report = out / "compare.md"
    if not grid:
        _plain_report(report, config_path, overrides, cfg, {n: out / n for n in names}, per_variant)
        return report
    report.write_text(experiment_markdown(runs.records, heading="#") + "\n![curves](curves.png)\n")
    plot_experiment(runs.records, out / "curves.png")
    return report


class GridRuns:
    """The runs of one compare as they start and end: each trainer's provenance.json (machine,
    commit, threads, wall time), the terminal's lines, and a record of each finished run."""

    def __init__(self, threads: Mapping[str, int], to_files: bool, describe, results: Optional[str | Path]):
        self.threads = threads  # variant -> its trainer's torch threads (a child process with its own --set)
        self.to_files = to_files  # each trainer's output goes to <run>/train.log, not the terminal
        self.describe = describe  # (run_dir, cell) -> the run's record; None: no records (one run per variant)
        self.results = results  # the results file each record is appended to as the run ends, or None
        self.records: List[dict] = []
        self.first_commit: Optional[str] = None  # the code the grid started with: a change later is said once
        self.began: Dict[Path, float] = {}  # run folder -> when its trainer started
        self.resumed: Dict[Path, Tuple[Path, int]] = {}  # run folder -> (checkpoint root, step resumed at)

    def add_record(self, run_dir: Path, cell) -> None:
        if self.describe is None:
            return
        self.records.append(self.describe(run_dir, cell))
        if self.results:  # each run as it is done: a grid stopped part-way keeps what it measured
            append_records(self.results, self.records[-1:])

    def start(self, cmd: List[str], run_cfg: Config, name: str, label: str) -> subprocess.Popen:
        run_dir = Path(run_cfg.train.output_dir)
        prov = {**provenance(), "trainer_threads": self.threads[name]}  # the trainer's beside this process's
        # An unfinished run (stopped earlier) resumes from its checkpoint, or starts over (compare_runs.py).
        how = continue_or_start_over(run_cfg, prov)
        cmd, prov = [*cmd, *how.flags], {**prov, **how.carried}
        if "--resume" in how.flags:
            self.resumed[run_dir] = (checkpoint_root(run_cfg), how.carried["resumed_at"][-1])
        run_dir.mkdir(parents=True, exist_ok=True)
        self.began[run_dir] = time.time()
        (run_dir / "provenance.json").write_text(json.dumps(prov) + "\n")
        self._note_commit(prov["commit"])
        line = f"{label}: training into {run_dir}" + (f", {how.words}" if how.words else "")
        if not self.to_files:
            print(line, flush=True)
            return start_trainer(cmd)
        print(f"{line} (output: {run_dir / 'train.log'})", flush=True)
        with open(run_dir / "train.log", "a") as log:
            return start_trainer(cmd, stdout=log, stderr=subprocess.STDOUT)

    def done(self, rc: int, run_dir: Path, cell, label: str) -> None:
        prov = json.loads((run_dir / "provenance.json").read_text())
        wall = round(time.time() - self.began.pop(run_dir), 1)
        (run_dir / "provenance.json").write_text(json.dumps({**prov, "wall_s": total_wall(prov, wall)}) + "\n")
        if rc == EXIT_CODE:  # Ctrl-C: the trainer saved a checkpoint, which the next compare resumes
            print(f"{label}: stopped after {wall:.0f} s, with a checkpoint", flush=True)
            return
        if rc != 0:
            print(f"{label}: failed (exit {rc}) after {wall:.0f} s", flush=True)
            if self.to_files:
                print(log_tail(run_dir / "train.log"), flush=True)
            return
        if self.to_files:
            print(f"{label}: done in {wall:.0f} s", flush=True)
        self.add_record(run_dir, cell)

    def failed_resuming(self, run_dir: Path, rc: int) -> bool:
        """Did the run fail (an error: not a signal, nor refused input) as it resumed, before a
        checkpoint past the one it resumed from? Run again, it would fail the same way."""
        if run_dir not in self.resumed or rc != 1:  # 1: an error; 2: refused input; < 0: a signal
            return False
        root, step = self.resumed[run_dir]
        return latest_step(root) == step

    def _note_commit(self, commit: str) -> None:
        if self.first_commit is not None and commit != self.first_commit:
            # each trainer imports the tree as it is when it starts: editing the checkout under a
            # running grid mixes code versions (run a long grid from a pinned worktree)
            print(
                f"warning: the code changed since this grid started ({self.first_commit} -> {commit}); "
                "the runs from here on use it (each record names its commit)",
                file=sys.stderr,
            )
        self.first_commit = commit


def _record(run_dir: Path, cell, *, cfg: Config, experiment, command, quick, overrides, per_variant) -> dict:
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
        "lr": float(lr) if lr is not None else variant_lr(cfg, extra),
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
