"""The `chord` command.

    chord config show CONFIG [key=value ...]     print the resolved config as YAML
    chord config reference                       every key, its default and meaning
    chord train CONFIG [key=value ...] [--resume] [--nproc N]
                                                 run CHORD: rollouts, rewards, updates, evaluation
    chord compare CONFIG [key=value ...] [--variants a,b] [--set VARIANT:key=value] [--out DIR]
                                                 the method and its baselines; table + curves
    chord eval CONFIG [key=value ...] [--data FILE] [--k K] [--checkpoint DIR]
                                                 avg@k on a benchmark file
    chord export-hf CONFIG CHECKPOINT OUT         a training checkpoint as a Hugging Face folder
    chord launch plan CONFIG --nodes N [--gpus-per-node G] [--mode colocated|disaggregated]
                                                 node roles, ranks, layout and exact commands
    chord bench train-step CONFIG [key=value ...] [--vs key=value ...]
                                                 tokens/s and peak memory of a training step
                                                 (--vs: against a variant, as ratios)

Every subcommand takes a YAML config and dotted overrides; config problems end the command
with one line naming the key and where it came from, and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .config import ConfigError, dump_config, load_config


def _config_show(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    sys.stdout.write(dump_config(cfg))
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    from .config_doc import reference

    sys.stdout.write(reference())
    return 0


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.nproc > 1:
        from .launcher import relaunch

        flags = (["--resume"] if args.resume else []) + (["--no-progress"] if args.no_progress else [])
        return relaunch(args.nproc, ["train", args.config, *args.overrides, *flags])
    from .loop import train

    result = train(cfg, resume=args.resume, progress=not args.no_progress and cfg.logging.progress)
    if result:
        print("final evaluation: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
        _summarise_run(cfg)
    return 0


def _summarise_run(cfg) -> None:
    """Held-out accuracy before and after, and a PNG of the run's curves (rank 0 only)."""
    import os
    from pathlib import Path

    from .metrics import read_metrics
    from .report import plot_curves, series

    out = Path(cfg.train.output_dir)
    if int(os.environ.get("RANK", "0")) != 0 or not (out / "metrics.jsonl").exists():
        return
    records = read_metrics(out / "metrics.jsonl")
    steps, acc = series(records, "eval/accuracy")
    if len(acc) >= 2 and steps[0] == 0:
        print(f"held-out accuracy (avg@{cfg.train.eval_samples}): base model {acc[0]:.3f} -> "
              f"{acc[-1]:.3f} after {steps[-1]} steps")  # fmt: skip
    png = plot_curves({cfg.model.name: records}, out / "curves.png")
    print(f"metrics: {out / 'metrics.jsonl'} (TensorBoard: {out / 'tensorboard'}), curves: {png}")


def _compare(args: argparse.Namespace) -> int:
    from .compare import parse_variant_overrides, run_compare, variants

    cfg = load_config(args.config, args.overrides)
    names = args.variants.split(",") if args.variants else None
    out = args.out or f"{cfg.train.output_dir}-compare"
    per_variant = parse_variant_overrides(args.set, list(variants(cfg)))
    report = run_compare(args.config, args.overrides, cfg, out, names, progress=not args.no_progress,
                         per_variant=per_variant)  # fmt: skip
    print(report.read_text())
    print(f"report: {report}  curves: {report.parent / 'curves.png'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import run_eval

    cfg = load_config(args.config, args.overrides)
    return run_eval(cfg, data=args.data, k=args.k, checkpoint=args.checkpoint, out=args.out)


def _export_hf(args: argparse.Namespace) -> int:
    from .hf_io import run_export_hf

    cfg = load_config(args.config, args.overrides)
    return run_export_hf(cfg, args.checkpoint, args.out)


def _launch_plan(args: argparse.Namespace) -> int:
    from .launch_plan import run_launch_plan

    cfg = load_config(args.config, args.overrides)
    return run_launch_plan(cfg, nodes=args.nodes, gpus_per_node=args.gpus_per_node, mode=args.mode,
                           rollout_nodes=args.rollout_nodes, config_path=args.config,
                           overrides=args.overrides)  # fmt: skip


def _bench_train_step(args: argparse.Namespace) -> int:
    from .train.bench import bench_train_step, compare_train_step  # imports Megatron: only when asked for

    cfg = load_config(args.config, args.overrides)
    if not args.vs:
        _print_table(bench_train_step(cfg, steps=args.steps))
        return 0
    variant = load_config(args.config, list(args.overrides) + list(args.vs))
    result = compare_train_step(cfg, variant, steps=args.steps)
    for part in ("baseline", "variant"):
        print(f"--- {part}{'' if part == 'baseline' else ': ' + ' '.join(args.vs)}")
        _print_table(result[part])
    print("--- variant / baseline")
    _print_table(result["ratios"])
    return 0


def _print_table(result) -> None:
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a YAML config file, e.g. configs/demo.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.steps=5")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chord", description="CHORD on Megatron-core.")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="inspect configs").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print the resolved config")
    _add_config_args(show)
    show.set_defaults(func=_config_show)
    ref = config.add_parser("reference", help="every key with its default and meaning (markdown)")
    ref.set_defaults(func=_config_reference)

    train = sub.add_parser("train", help="run (or resume) CHORD training")
    _add_config_args(train)
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    train.add_argument("--nproc", type=int, default=1, help="processes on this machine (torchrun-style)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    compare = sub.add_parser("compare", help="GRPO, SFT, SFT-then-RL, CHORD-mu, CHORD-phi on one budget")
    _add_config_args(compare)
    compare.add_argument("--variants", help="comma-separated subset (default: all)")
    compare.add_argument("--out", help="output folder (default: <train.output_dir>-compare)")
    compare.add_argument("--set", action="append", default=[], metavar="VARIANT:key=value",
                         help="an override for one variant only, e.g. grpo:optim.lr=3e-4 (repeatable)")
    compare.add_argument("--no-progress", action="store_true", help="no progress bars")
    compare.set_defaults(func=_compare)

    ev = sub.add_parser("eval", help="avg@k of a model on a benchmark file with the task's reward")
    _add_config_args(ev)
    ev.add_argument("--data", help="JSONL benchmark file (default: data.eval_path)")
    ev.add_argument("--k", type=int, help="samples per prompt (default: train.eval_samples)")
    ev.add_argument("--checkpoint", help="a training checkpoint folder to evaluate (default: the config's model)")
    ev.add_argument("--out", help="write per-prompt results as JSONL here")
    ev.set_defaults(func=_eval)

    export = sub.add_parser("export-hf", help="a training checkpoint as a Hugging Face folder")
    export.add_argument("config")
    export.add_argument("checkpoint", help="a checkpoint folder (or a root with a `latest` pointer)")
    export.add_argument("out", help="the Hugging Face folder to write")
    export.add_argument("overrides", nargs="*", metavar="key=value")
    export.set_defaults(func=_export_hf)

    launch = sub.add_parser("launch", help="multi-node launch helpers").add_subparsers(dest="action", required=True)
    plan = launch.add_parser("plan", help="print which node runs what, with the exact commands")
    _add_config_args(plan)
    plan.add_argument("--nodes", type=int, required=True)
    plan.add_argument("--gpus-per-node", type=int, default=8)
    plan.add_argument("--mode", choices=("colocated", "disaggregated"), default="disaggregated",
                      help="disaggregated: SGLang on some nodes, training on the others")
    plan.add_argument("--rollout-nodes", type=int, help="nodes for SGLang in disaggregated mode")
    plan.set_defaults(func=_launch_plan)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="action", required=True)
    step = bench.add_parser("train-step", help="tokens/s and peak memory of one training step")
    _add_config_args(step)
    step.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    step.add_argument("--vs", nargs="+", metavar="key=value", default=[],
                      help="also run the config with these overrides, in the same run, and print the ratios")
    step.set_defaults(func=_bench_train_step)
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
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    from .data.jsonl import DataError

    try:
        return args.func(args)
    except ConfigError as e:
        print(f"chord: config error: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"chord: data error: {e}", file=sys.stderr)
        return 2
    except _run_errors() as e:
        # Stops the run, with one line naming the culprit; metrics and checkpoints written so
        # far stay where they are, and `--resume` continues from the last checkpoint.
        print(f"chord: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def _run_errors() -> tuple:
    from .rollout.engine import RolloutError
    from .rewards import RewardError
    from .sync import SyncVerificationError

    return (RolloutError, RewardError, SyncVerificationError)


if __name__ == "__main__":
    sys.exit(main())
