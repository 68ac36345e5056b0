"""The `chord` command: its arguments, and the one place errors become a line and an exit code.

    chord config show CONFIG [key=value ...]     print the resolved config as YAML
    chord config reference                       every key, its default and meaning
    chord config from-hf FOLDER                  the `model:` section of a Hugging Face checkpoint
    chord train CONFIG [key=value ...] [--resume | --overwrite] [--nproc N]
                                                 run CHORD: rollouts, rewards, updates, evaluation
    chord compare CONFIG [key=value ...] [--variants a,b] [--set VARIANT:key=value] [--out DIR]
            [--seeds N] [--lr-grid a,b,c] [--quick] [--record FILE] [--shard K/N] [--jobs N]
                                                 the method and its baselines; table + curves
    chord report RESULTS [--markdown] [--doc FILE] [--readme FILE]
                                                 the tables and curves of a results file
    chord eval CONFIG [key=value ...] [--data FILE] [--k K] [--checkpoint DIR]
                                                 avg@k on a benchmark file
    chord export-hf CONFIG CHECKPOINT OUT [--overwrite]
                                                 a training checkpoint as a Hugging Face folder
    chord launch plan CONFIG --nodes N [--gpus-per-node G] [--mode colocated|disaggregated]
                                                 node roles, ranks, layout and exact commands
    chord launch script-env CONFIG ...           the same check, as shell assignments (launch/*.sbatch)
    chord doctor [--sglang-python P] [--router-python P] [--cpu] [--trainer-only]
                                                 versions of the trainer's, SGLang's and the router's
                                                 Python; refuses what cannot work together
    chord bench train-step CONFIG [key=value ...] [--vs key=value ...]
                                                 tokens/s and peak memory of a training step
                                                 (--vs: against a variant, as ratios)
    chord bench loop CONFIG [key=value ...] [--steps N] [--runs R] [--seeds S] [--record FILE] [--vs-trl]
                                                 steps/s of the training loop, time per phase
                                                 (--vs-trl: against TRL's GRPOTrainer)
    chord data prep-openr1 | prep-toolace IN... OUT
                                                 the paper's datasets as JSONL files

Each subcommand is one module of chord_megatron/commands, imported only when it runs (so that
`chord config show` does not pay for torch). Every subcommand takes a YAML config and dotted
overrides. A ChordError (errors.py) ends the command with one line, `chord: <kind>: <message>`,
and its exit code (2: fix the input; 1: the run stopped); anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .errors import ChordError


def _command(module: str, function: str = "run"):
    """A handler that imports commands/<module> when called."""

    def handler(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"{__package__}.commands.{module}"), function)(args)

    return handler


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a YAML config file, e.g. configs/demo.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.steps=5")


def _add_pass_through(sub, name: str, help: str, handler) -> None:
    """A subcommand whose arguments its own parser reads (`chord <group> <name> --help`)."""
    p = sub.add_parser(name, help=help, add_help=False)
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chord", description="CHORD on Megatron-core.")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="inspect configs").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print the resolved config")
    _add_config_args(show)
    show.set_defaults(func=_command("config", "show"))
    ref = config.add_parser("reference", help="every key with its default and meaning (markdown)")
    ref.set_defaults(func=_command("config", "print_reference"))
    from_hf = config.add_parser("from-hf", help="the model: section of a Hugging Face checkpoint folder")
    from_hf.add_argument("folder")
    from_hf.set_defaults(func=_command("config", "from_hf"))

    train = sub.add_parser("train", help="run (or resume) CHORD training")
    _add_config_args(train)
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in train.output_dir (its metrics, checkpoints)",
    )
    train.add_argument("--nproc", type=int, default=1, help="processes on this machine (torchrun-style)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_command("train"))

    compare = sub.add_parser("compare", help="GRPO, SFT, SFT-then-RL, CHORD-mu, CHORD-phi on one budget")
    _add_config_args(compare)
    compare.add_argument("--variants", help="comma-separated subset (default: all)")
    compare.add_argument(
        "--out",
        help="output folder (default: <train.output_dir>-compare); run again, the same command keeps its finished "
        "runs and resumes its stopped ones",
    )
    compare.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="VARIANT:key=value",
        help="an override for one variant only, e.g. grpo:optim.lr=3e-4 (repeatable; an lr brings "
        "optim.min_lr scaled with it, as --lr-grid does, unless min_lr is set too)",
    )
    compare.add_argument(
        "--seeds", type=int, default=1, help="seeds per variant: train.seed, +1, ... (each its own base)"
    )
    compare.add_argument(
        "--lr-grid", metavar="a,b,c", help="run every variant at each learning rate; report each at its best"
    )
    compare.add_argument("--quick", action="store_true", help="a shorter budget that says something in minutes")
    compare.add_argument(
        "--shard",
        metavar="K/N",
        help="run only the K-th of N interleaved parts of the grid (N processes share it; record to one file)",
    )
    compare.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="trainers at once, from one queue (never two training one base model); each writes "
        "<run>/train.log. Give each train.cpu_threads cores",
    )
    compare.add_argument("--record", metavar="FILE", help="append one record per run to this JSONL results file")
    compare.add_argument("--name", help="the experiment's name in the results file (default: config and overrides)")
    compare.add_argument("--no-progress", action="store_true", help="no progress bars")
    compare.set_defaults(func=_command("compare"))

    report = sub.add_parser(
        "report", help="tables and curves of a results file (chord compare --record, chord bench loop --record)"
    )
    report.add_argument("results", help="a JSONL results file, e.g. results/demo.jsonl")
    report.add_argument("--experiment", action="append", help="only this experiment (repeatable; default: all)")
    report.add_argument("--markdown", action="store_true", help="print the tables (the default without --doc/--readme)")
    report.add_argument("--doc", metavar="FILE", help="write a markdown page, with each experiment's curves beside it")
    report.add_argument(
        "--readme",
        metavar="FILE",
        help="replace the block between <!-- demo-results --> markers (<!-- loop-bench --> for a bench file)",
    )
    report.set_defaults(func=_command("report"))

    ev = sub.add_parser("eval", help="avg@k of a model on a benchmark file with the task's reward")
    _add_config_args(ev)
    ev.add_argument("--data", help="JSONL benchmark file (default: the held-out prompts training evaluates on)")
    ev.add_argument("--k", type=int, help="samples per prompt (default: train.eval_samples)")
    ev.add_argument("--checkpoint", help="a training checkpoint folder to evaluate (default: the config's model)")
    ev.add_argument("--out", help="write per-prompt results as JSONL here")
    ev.set_defaults(func=_command("eval"))

    export = sub.add_parser("export-hf", help="a training checkpoint as a Hugging Face folder")
    export.add_argument("config")
    export.add_argument("checkpoint", help="a checkpoint folder (or a root with a `latest` pointer)")
    export.add_argument("out", help="the Hugging Face folder to write (new or empty)")
    export.add_argument("--overwrite", action="store_true", help="replace OUT if it holds files")
    export.add_argument("overrides", nargs="*", metavar="key=value")
    export.set_defaults(func=_command("export_hf"))

    launch = sub.add_parser("launch", help="multi-node launch helpers").add_subparsers(dest="action", required=True)
    plan = launch.add_parser("plan", help="print which node runs what, with the exact commands")
    _add_config_args(plan)
    plan.add_argument("--nodes", type=int, required=True)
    plan.add_argument("--gpus-per-node", type=int, default=8)
    plan.add_argument(
        "--mode",
        choices=("colocated", "disaggregated"),
        default="disaggregated",
        help="disaggregated: SGLang on some nodes, training on the others",
    )
    plan.add_argument(
        "--rollout-nodes",
        type=int,
        help="nodes for SGLang in disaggregated mode (default: the config's launch.rollout_nodes, else ceil(N / 4))",
    )
    plan.set_defaults(func=_command("launch.plan_text"))
    _add_pass_through(
        launch,
        "script-env",
        "the plan's check and shell assignments, for launch/*.sbatch",
        _command("launch.script_env", "script_env"),
    )

    doctor = sub.add_parser(
        "doctor", help="torch/CUDA/NCCL/driver/TE/megatron-core of the trainer's, SGLang's and the router's Python"
    )
    doctor.add_argument("--sglang-python", help="SGLang's Python (a command; default: $SGLANG_PYTHON)")
    doctor.add_argument(
        "--router-python", help="the Python that runs sglang-router (default: $ROUTER_PYTHON, else the trainer's)"
    )
    doctor.add_argument("--trainer-python", help="the trainer's Python (default: this one)")
    doctor.add_argument("--trainer-only", action="store_true", help="no SGLang in this job: check the trainer alone")
    doctor.add_argument("--cpu", action="store_true", help="a CPU run: skip NCCL, driver and transformer-engine")
    doctor.set_defaults(func=_command("doctor"))

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="action", required=True)
    step = bench.add_parser("train-step", help="tokens/s and peak memory of one training step")
    _add_config_args(step)
    step.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    step.add_argument(
        "--vs",
        nargs="+",
        metavar="key=value",
        default=[],
        help="also run the config with these overrides, in the same run, and print the ratios",
    )
    step.set_defaults(func=_command("bench"))
    loop = bench.add_parser("loop", help="steps/s of the training loop and its phases")
    _add_config_args(loop)
    loop.add_argument("--steps", type=int, default=20, help="training steps per run (at least 3)")
    loop.add_argument("--runs", type=int, default=3, help="runs (of each seed); the medians are printed")
    loop.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="seeds train.seed, +1, ... (each its own base model): held-out accuracy as mean ± std over them",
    )
    loop.add_argument("--record", metavar="FILE", help="append the result to this JSONL results file")
    loop.add_argument(
        "--vs-trl",
        action="store_true",
        help="also train the same GRPO run with TRL's GRPOTrainer (the trl extra) and print the ratio",
    )
    loop.set_defaults(func=_command("bench_loop"))

    data = sub.add_parser("data", help="dataset preparation").add_subparsers(dest="action", required=True)
    _add_pass_through(data, "prep-openr1", "OpenR1-Math-220k -> SFT / RL / eval JSONL", _command("data", "prep"))
    _add_pass_through(data, "prep-toolace", "ToolACE -> SFT / RL / eval JSONL", _command("data", "prep"))
    return parser


def _quiet_known_dependency_warnings() -> None:
    """Megatron warns once per process that apex / transformer-engine are absent (expected on
    CPU) and torch about collectives Megatron still calls; neither is actionable for a user."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine).* not installed")
    warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.distributed\..*` is deprecated")
    warnings.filterwarnings("ignore", message=r"full scope is deprecated")
    warnings.filterwarnings("ignore", message=r"The \.grad attribute of a Tensor that is not a leaf")


def main(argv: Optional[List[str]] = None) -> int:
    _quiet_known_dependency_warnings()
    parser = build_parser()
    # Overrides may come after options too (`chord train C --resume train.steps=5`): argparse
    # stops its positional list at the first option, so gather the leftovers here.
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "argv"):  # a pass-through subcommand: its own parser reads everything
        args.argv, extra = [*extra, *args.argv], []
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except ChordError as e:
        # One line naming the culprit; metrics and checkpoints written so far stay where they
        # are, and `--resume` continues from the last checkpoint.
        print(f"chord: {e.one_line()}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
