"""The `chord` command.

    chord config show CONFIG [key=value ...]     print the resolved config as YAML
    chord train CONFIG [key=value ...] [--resume] [--nproc N]
                                                 run CHORD: rollouts, rewards, updates, evaluation
    chord bench train-step CONFIG [key=value ...] tokens/s and peak memory of a training step

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


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.nproc > 1:
        from .launcher import relaunch

        return relaunch(args.nproc, ["train", args.config, *args.overrides] + (["--resume"] if args.resume else []))
    from .loop import train

    result = train(cfg, resume=args.resume, progress=not args.no_progress and cfg.logging.progress)
    if result:
        print("final evaluation: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
    return 0


def _bench_train_step(args: argparse.Namespace) -> int:
    from .train.bench import bench_train_step  # imports Megatron: only when asked for

    cfg = load_config(args.config, args.overrides)
    result = bench_train_step(cfg, steps=args.steps)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    return 0


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

    train = sub.add_parser("train", help="run (or resume) CHORD training")
    _add_config_args(train)
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    train.add_argument("--nproc", type=int, default=1, help="processes on this machine (torchrun-style)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="action", required=True)
    step = bench.add_parser("train-step", help="tokens/s and peak memory of one training step")
    _add_config_args(step)
    step.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    step.set_defaults(func=_bench_train_step)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"chord: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
