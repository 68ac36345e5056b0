"""`chord launch plan`: the launch plan (plan.py) printed, as script-env also writes it to the job's
plan file: node roles, the parallel layout, the rollout servers, the memory table, ports and
commands; or the one line that says why the layout cannot work."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from .layout import LayoutError
from .memory import GIB
from .memory_table import format_memory
from .plan import (
    PORT_BASE_FORMULA,
    PORT_SPAN,
    ROUTER_METRICS_PORT_OFFSET,
    ROUTER_PORT_OFFSET,
    SERVER_NCCL_PORT_OFFSET,
    SERVER_PORT_OFFSET,
    SYNC_PORT_OFFSET,
    SYNC_PORTS,
    TRAIN_PORT_OFFSET,
    LaunchPlan,
    plan_launch,
)


def _gib(x: float) -> str:
    return f"{x / GIB:.1f} GiB"


def _ranges(items: Sequence[int]) -> str:
    return f"{items[0]}-{items[-1]}" if len(items) > 1 else str(items[0])


def format_plan(plan: LaunchPlan) -> str:
    L, m = plan.layout, plan.memory
    out: List[str] = []
    gpus = plan.nodes * plan.gpus_per_node
    unit = "CPU processes" if plan.cpu else "GPUs"
    out.append(f"launch plan: {plan.mode}, {plan.nodes} node(s) x {plan.gpus_per_node} {unit} = {gpus} {unit}")
    if plan.mode == "disaggregated":
        out.append(f"  {plan.rollout_nodes} rollout node(s) (SGLang), {plan.train_nodes} training node(s)")
    out.append("")
    out.append('nodes (node<i> = line i+1 of `scontrol show hostnames "$SLURM_JOB_NODELIST"`):')
    for n in plan.node_roles:
        parts = []
        if n.train_ranks is not None:
            head = " (torchrun master)" if n.train_ranks.start == 0 else ""
            parts.append(f"trainer ranks {n.train_ranks.start}-{n.train_ranks.stop - 1}{head}")
        if n.servers:
            parts.append(
                f"{len(n.servers)} SGLang server(s): "
                + ", ".join(
                    f"GPUs {_ranges(s.gpus)} port +{s.port_offset} nccl +{s.nccl_port_offset}" for s in n.servers
                )
            )
        if "router" in n.roles:
            parts.append(f"router port +{ROUTER_PORT_OFFSET}")
        out.append(f"  {n.host:<10} {'+'.join(n.roles):<20} " + "; ".join(parts))
    out.append("")
    vpp = L.vpp if L.vpp is not None else "-"
    out.append(
        f"parallel layout (trainer): TP={L.tp} PP={L.pp} VPP={vpp} CP={L.cp} DP={L.dp}  "
        f"(DP = {L.world} trainer {unit} / (TP x PP x CP = {L.tp * L.pp * L.cp}))"
    )
    if plan.engine == "sglang":
        out.append(
            f"rollout: {plan.num_servers} SGLang server(s), {plan.sglang_tp} GPU(s) each (sglang TP), "
            f"{plan.servers_per_node} per node; router on {plan.node_roles[0].host}; "
            f"weight sync: {plan.weight_sync}"
        )
    else:
        out.append("rollout: in-process on trainer rank 0 (rollout.engine=inprocess), no SGLang servers")
    out.append(f"step batch: at least {plan.rows_per_step} rows over DP={L.dp}")
    out.append("")
    out += format_memory(m, cpu=plan.cpu, sglang_colocated=plan.mode == "colocated" and plan.engine == "sglang")
    if plan.engine == "sglang":
        out.append(f"  SGLang weights per server GPU: {_gib(m.sglang_weights)}")
    for w in plan.warnings:
        out.append(f"warning: {w}")
    out.append("")
    this_job = "" if plan.port_base == "$PORT_BASE" else f" (this job: {plan.port_base})"
    out.append(
        f"ports: PORT_BASE = {PORT_BASE_FORMULA} unless set{this_job}; every port of the job is in "
        f"PORT_BASE..+{PORT_SPAN - 1}: torchrun master +{TRAIN_PORT_OFFSET}, router +{ROUTER_PORT_OFFSET}, "
        f"router metrics +{ROUTER_METRICS_PORT_OFFSET}, weight-sync group +{SYNC_PORT_OFFSET}.."
        f"+{SYNC_PORT_OFFSET + SYNC_PORTS - 1}, SGLang server i +{SERVER_PORT_OFFSET}+i (its --nccl-port "
        f"+{SERVER_NCCL_PORT_OFFSET}+i)"
    )
    out.append("commands:")
    for role, cmd in plan.commands.items():
        out.append(f"  # {role}")
        out.append(f"  {cmd}")
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    from ...config import load_config

    cfg = load_config(args.config, args.overrides)
    return run_launch_plan(
        cfg,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        mode=args.mode,
        rollout_nodes=args.rollout_nodes,
        config_path=args.config,
        overrides=args.overrides,
    )


def run_launch_plan(
    cfg,
    *,
    nodes: int,
    gpus_per_node: int = 8,
    mode: str = "disaggregated",
    rollout_nodes: Optional[int] = None,
    config_path: Optional[str] = None,
    overrides: Sequence[str] = (),
    out=None,
    err=None,
) -> int:
    """`chord launch plan`: print the plan and return 0, or print one line and return 2."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        plan = plan_launch(
            cfg,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            mode=mode,
            rollout_nodes=rollout_nodes,
            config_path=config_path,
            overrides=overrides,
        )
    except LayoutError as e:
        print(f"chord: launch plan: {e}", file=err)
        return 2
    out.write(format_plan(plan))
    return 0
