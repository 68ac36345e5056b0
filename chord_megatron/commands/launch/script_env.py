"""`chord launch script-env`: the launch plan's check for the sbatch scripts (launch/common.sh).

The scripts run it before starting anything, so a job that `chord launch plan` refuses stops in
its first seconds; otherwise it prints the plan's shell assignments for the script to eval and
writes the readable plan beside the job's logs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import List, Optional

from .layout import LayoutError
from .plan import SCRIPTS, plan_launch
from .plan_text import format_plan


def script_env(args: argparse.Namespace) -> int:
    return main(["script-env", *args.argv])


def main(argv: Optional[List[str]] = None) -> int:
    """`script-env CONFIG [key=value ...] --nodes N --gpus-per-node G --mode M [--rollout-nodes R]
    [--hosts h0,h1,...] [--port-base P] [--cpu] [--plan-file F]`: check the layout, write the
    readable plan to F, print `NAME=value` shell assignments (shell-quoted) for the script to
    eval. Exit 2 with one line on stderr when the layout is impossible or the config is wrong."""
    from ...config import ConfigError, load_config

    ap = argparse.ArgumentParser(prog="chord launch")
    sub = ap.add_subparsers(dest="action", required=True)
    se = sub.add_parser("script-env")
    se.add_argument("config")
    se.add_argument("overrides", nargs="*")
    se.add_argument("--nodes", type=int, required=True)
    se.add_argument("--gpus-per-node", type=int, required=True)
    se.add_argument("--mode", choices=tuple(SCRIPTS), required=True)
    se.add_argument("--rollout-nodes", type=int)
    se.add_argument("--hosts", help="comma-separated node names, in allocation order")
    se.add_argument("--port-base", type=int)
    se.add_argument("--cpu", action="store_true", help="CPU run: skip the GPU memory checks")
    se.add_argument("--plan-file", help="write the readable plan here")
    args, extra = ap.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray:
        ap.error(f"unrecognized arguments: {' '.join(stray)}")
    overrides = [*args.overrides, *extra]
    try:
        cfg = load_config(args.config, overrides)
        plan = plan_launch(
            cfg,
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            mode=args.mode,
            rollout_nodes=args.rollout_nodes,
            config_path=args.config,
            overrides=overrides,
            hosts=args.hosts.split(",") if args.hosts else None,
            port_base=args.port_base,
            cpu=args.cpu,
        )
    except ConfigError as e:
        print(f"chord: config error: {e}", file=sys.stderr)
        return 2
    except LayoutError as e:
        print(f"chord: launch plan: {e}", file=sys.stderr)
        return 2
    if args.plan_file:
        with open(args.plan_file, "w") as f:
            f.write(format_plan(plan))
    for key, value in plan.env.items():
        print(f"{key}={shlex.quote(value)}")
    return 0
