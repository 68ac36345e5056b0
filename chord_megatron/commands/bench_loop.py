"""`chord bench loop CONFIG`: steps/s of the real training loop and where each step's time goes.

Each run is a plain `chord train` of the config (overrides appended) in its own fresh folder;
its metrics.jsonl carries every step's phases (loop.py): generation, rewards, the old
log-probs' pass, forward/backward and optimizer, weight sync, the probe check, and a clock.
steps/s is taken between the records of the first and the last step, so it counts everything
a step costs (logging, evaluations and checkpoints as configured) but not the start-up (base
model, engine, first sync). The first step is left out of the phase means (warm-up). With
rollout.asynchronous, generation and rewards run during the update ("bg" in the table): the
step waits only for what is left of them. Runs
repeat `--runs` times; the medians are printed, with the machine, thread count and commit,
and appended to `--record FILE` (a JSONL results file) when asked.

`--vs-trl` trains the same GRPO run with TRL's GRPOTrainer after each chord run (bench_trl.py:
the same exported base model, tokenizer, prompts, reward and hyper-parameters), both sides with
the grpo variant's overrides (compare_variants.py), and prints TRL's steps/s, the ratio chord/TRL and
both held-out accuracy curves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

from ..config import ConfigError, load_config
from ..metrics.logger import read_metrics
from ..metrics.loop_bench_table import final_accuracy_by_seed
from ..metrics.provenance import provenance, trainer_threads
from ..metrics.results import Stats, seed_by_seed

# (phase, the metric that times it), in the order a step runs them.
PHASES = (
    ("generate", "rollout/seconds"),
    ("reward", "reward/seconds"),
    ("waiting for rollouts (asynchronous)", "rollout/wait_seconds"),
    ("old log-probs pass", "old_logp/seconds"),
    ("forward/backward + optimizer", "update/seconds"),
    ("weight sync", "sync/seconds"),
    ("sync check (probe)", "sync/probe_seconds"),
)
OTHER = "other (logging, eval, checkpoint)"
# With rollout.asynchronous these run in the background, during the update: not in the sum.
OVERLAPPED = ("generate", "reward")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)  # a bad config stops here, in one line
    overrides = list(args.overrides)
    vs_trl = getattr(args, "vs_trl", False)
    if vs_trl:  # refused (TRL missing, a setting TRL cannot match) before anything runs
        from .bench_trl import check_comparable, require_trl
        from .compare_variants import variants

        require_trl()
        overrides += variants(cfg)["grpo"]
        cfg = load_config(args.config, [*overrides, f"train.steps={args.steps}"])
        check_comparable(cfg, args.steps)
    seeds_n = getattr(args, "seeds", 1)
    if seeds_n < 1:
        raise ConfigError("--seeds", str(seeds_n), "must be >= 1")
    # The runs of one seed sample identically (seeded), so held-out accuracy varies only across
    # seeds: each seed its own base model, prompts' order and sampling, on both sides.
    seeds = [cfg.train.seed + k for k in range(seeds_n)] if seeds_n > 1 else [None]
    root = Path(tempfile.mkdtemp(prefix="chord-bench-loop-"))
    runs, trl_runs, run_seeds, trl_inputs = [], [], [], {}
    for i in range(args.runs):  # chord and TRL in turns, so that both see the same machine load
        for seed in seeds:
            seeded = overrides + ([f"train.seed={seed}"] if seed is not None else [])
            out = root / (f"run{i}" + (f"-seed{seed}" if seed is not None else ""))
            runs.append(_one_run(args.config, seeded, args.steps, out))
            run_seeds.append(seed if seed is not None else cfg.train.seed)
            if vs_trl:
                from .bench_trl import prepare, train_trl

                if seed not in trl_inputs:  # after the seed's first chord run: its base model is cached
                    seed_cfg = cfg if seed is None else cfg.replace(**{"train.seed": str(seed)})
                    trl_inputs[seed] = prepare(seed_cfg, root / ("trl" + (f"-seed{seed}" if seed is not None else "")))
                trl_runs.append(train_trl(trl_inputs[seed], root / f"trl-{out.name}"))
    flags = (
        [f"--steps {args.steps}"] + ([f"--seeds {seeds_n}"] if seeds_n > 1 else []) + (["--vs-trl"] if vs_trl else [])
    )
    machine = provenance()
    result = {
        "command": " ".join(["chord bench loop", args.config, *args.overrides, *flags]),
        **machine,
        "chord_torch_threads": trainer_threads(cfg.train.cpu_threads),
        **summarize(runs),
        "run_seeds": run_seeds,
        "runs_dir": str(root),
    }
    if vs_trl:
        result.update(summarize_trl(trl_runs, cfg, result["steps_per_s"], forced=overrides[len(args.overrides) :]))
    print(format_result(result))
    if args.record:
        with open(args.record, "a") as f:
            f.write(json.dumps(result) + "\n")
        print(f"recorded in {args.record}")
    return 0


def _one_run(config: str, overrides: Sequence[str], steps: int, out: Path) -> List[dict]:
    cmd = [
        sys.executable,
        "-m",
        "chord_megatron.cli",
        "train",
        config,
        *overrides,
        f"train.steps={steps}",
        f"train.output_dir={out}",
        "logging.progress=false",
        "logging.tensorboard=false",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(proc.returncode)
    return read_metrics(out / "metrics.jsonl")


def phase_seconds(records: List[dict]) -> Dict[str, float]:
    """Mean seconds per step of each phase over the step records after the first, and the rest
    of the step-to-step interval as OTHER; plus steps_per_s."""
    steps = [r for r in records if "clock/seconds" in r]
    if len(steps) < 3:
        raise ValueError(f"chord bench loop needs at least 3 steps, got {len(steps)}")
    later = steps[1:]
    interval = (steps[-1]["clock/seconds"] - steps[0]["clock/seconds"]) / (len(steps) - 1)
    out = {name: sum(r.get(key, 0.0) for r in later) / len(later) for name, key in PHASES}
    overlapped = any("rollout/wait_seconds" in r for r in later)
    serial = sum(v for k, v in out.items() if not (overlapped and k in OVERLAPPED))
    out[OTHER] = max(interval - serial, 0.0)
    out["steps_per_s"] = 1.0 / interval
    return out


def summarize(runs: List[List[dict]]) -> dict:
    per_run = [phase_seconds(records) for records in runs]
    medians = {k: statistics.median(r[k] for r in per_run) for k in per_run[0]}
    accuracy = {}  # held-out accuracy by step, per run (evaluation records)
    for i, records in enumerate(runs):
        accuracy[i] = {r["step"]: r["eval/accuracy"] for r in records if "eval/accuracy" in r}
    return {
        "runs": len(runs),
        "steps_per_s": medians.pop("steps_per_s"),
        "steps_per_s_runs": [r["steps_per_s"] for r in per_run],
        "phase_seconds": medians,
        "eval_accuracy": accuracy,
    }


def summarize_trl(trl_runs: List[dict], cfg, chord_steps_per_s: float, forced: List[str]) -> dict:
    """The TRL side of a --vs-trl result: median steps/s, the ratio chord/TRL, TRL's curves and
    exactly what TRL was given."""
    from .bench_trl import TRL_VERSION, grpo_config_kwargs

    median = statistics.median(r["steps_per_s"] for r in trl_runs)
    settings = grpo_config_kwargs(cfg, output_dir="<run folder>", bf16=False)
    settings.pop("bf16")  # decided on the machine (model.dtype); not a setting of the config
    return {
        "forced_overrides": forced,
        "trl": {
            "version": TRL_VERSION,
            "steps_per_s": median,
            "steps_per_s_runs": [r["steps_per_s"] for r in trl_runs],
            "eval_accuracy": {i: r["eval_accuracy"] for i, r in enumerate(trl_runs)},
            "train_reward": {i: r["train_reward"] for i, r in enumerate(trl_runs)},
            "grpo_config": settings,
        },
        "chord_over_trl": chord_steps_per_s / median,
    }


def format_result(r: dict) -> str:
    lines = [
        f"{r['command']}",
        f"  {r['cpu']}, {r['torch_threads']} torch threads, commit {r['commit']}, {r['runs']} run(s), medians",
        f"  {'phase':36} {'s/step':>9} {'share':>7}",
    ]
    overlapped = r["phase_seconds"]["waiting for rollouts (asynchronous)"] > 0
    total = sum(v for k, v in r["phase_seconds"].items() if not (overlapped and k in OVERLAPPED))
    for name, seconds in r["phase_seconds"].items():
        share = "(bg)" if overlapped and name in OVERLAPPED else f"{seconds / total:.1%}"
        lines.append(f"  {name:36} {seconds:9.4f} {share:>7}")
    runs = " ".join(f"{x:.3g}" for x in r["steps_per_s_runs"])
    lines.append(f"  steps/s: {r['steps_per_s']:.3g} (runs: {runs})")
    seeds = r.get("run_seeds") or []
    if len(set(seeds)) > 1:
        chord_final = final_accuracy_by_seed(r["eval_accuracy"], seeds)
        spread = Stats(tuple(chord_final.values())).fmt()
        line = f"  held-out accuracy at the last step over {len(chord_final)} seeds: chord {spread}"
        if "trl" in r:
            trl_final = final_accuracy_by_seed(r["trl"]["eval_accuracy"], seeds)
            above, below, level = seed_by_seed(chord_final, trl_final)
            line += (
                f", TRL {Stats(tuple(trl_final.values())).fmt()}; chord ends above TRL on {above}, below on {below}, "
                f"level on {level} of {len(chord_final)} seeds"
            )
        lines.append(line)
    for i, acc in r["eval_accuracy"].items():
        if acc:
            lines.append(f"  run {i} held-out accuracy by step: " + ", ".join(f"{s}: {a:.3f}" for s, a in acc.items()))
    if "trl" in r:
        t = r["trl"]
        runs = " ".join(f"{x:.3g}" for x in t["steps_per_s_runs"])
        lines.append(f"  with {' '.join(r['forced_overrides'])} (GRPO) on both sides")
        lines.append(f"  TRL {t['version']} GRPOTrainer steps/s: {t['steps_per_s']:.3g} (runs: {runs})")
        lines.append(f"  chord/TRL steps/s: {r['chord_over_trl']:.2f}x")
        for i, acc in t["eval_accuracy"].items():
            if acc:
                curve = ", ".join(f"{s}: {a:.3f}" for s, a in acc.items())
                lines.append(f"  TRL run {i} held-out accuracy by step: {curve}")
    return "\n".join(lines)
