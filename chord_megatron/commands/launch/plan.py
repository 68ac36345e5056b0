"""`chord launch plan`: which node runs what on a slurm job, with the exact commands.

Pure layout math; plan_text.py prints it. `plan_launch(cfg, nodes=..., gpus_per_node=...)`
returns a `LaunchPlan` (node roles, trainer ranks, the parallel layout, the SGLang servers, a
memory estimate, the per-role commands) or raises `LayoutError` with one line saying why the
layout cannot work; `format_plan(plan)` (plan_text.py) renders it. The sbatch scripts in launch/
run the same checks before starting anything (`chord launch script-env ...`, script_env.py), so
a job that `chord launch plan` refuses also stops in its first seconds.

Modes
  disaggregated  the first R nodes of the allocation run SGLang servers (the router on the first
                 of them); the other N - R nodes run Megatron training. R is --rollout-nodes
                 (ROLLOUT_NODES in the scripts), else the config's launch.rollout_nodes, else
                 ceil(N / 4), at least 1 (`default_rollout_nodes`): one rollout node for every
                 three training nodes, a starting point for RL where generation takes about as
                 long as the update. Weights travel by NCCL broadcast (rollout.weight_sync=nccl)
                 unless the config asks for disk.
  colocated      every node runs training on all its GPUs and, with rollout.engine=sglang, also
                 SGLang servers on the same GPUs (set sglang.mem_fraction_static so both fit);
                 the router runs on the first node. Weights: tensor (CUDA IPC) on one node;
                 on several nodes `tensor` only reaches rank 0's node, so it becomes `disk`
                 (train.output_dir must be on a shared filesystem). NCCL is refused: a server
                 and trainer rank 0 would share GPU 0, which NCCL rejects in one communicator.
                 With rollout.engine=inprocess there are no servers (rank 0 generates).

Rules (each refusal is one line, exit status 2)
  * parallel.tensor must divide the GPUs of a node: a tensor-parallel group never leaves a node,
    because TP all-reduces every layer and is only fast over NVLink. TP > G is refused, not
    warned about (and so is a TP that does not divide G, which would straddle two nodes).
  * TP x PP x CP must divide the trainer GPUs; DP = trainer GPUs / (TP x PP x CP).
  * model.vocab_size must be divisible by TP (the model does not pad its vocabulary).
  * a server's GPUs (sglang.tp_size or sglang.tp, default 1, times dp_size and pp_size) must divide G.
  * the smallest step batch (rollout.prompts_per_step x rollout.samples_per_prompt rows) must give
    every DP rank at least one row.
  * GPU 0's memory estimate (`estimate_memory`: the trainer, and colocated SGLang's static and
    dynamic memory) must fit the GPU in every phase of a step, and so must the SGLang weights
    (2 bytes per parameter / sglang TP).

Node i below means line i+1 of `scontrol show hostnames "$SLURM_JOB_NODELIST"`; ports are
offsets from PORT_BASE, which the scripts derive from SLURM_JOB_ID (`PORT_BASE_FORMULA`) so that
two jobs sharing a node do not collide; PORT_BASE=... overrides it.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ...config_checks import sglang_gpus_per_server, weight_sync_layout_problem
from .layout import LayoutError, ParallelLayout
from .memory import GIB, H100_MEMORY_GIB, MemoryEstimate, estimate_memory, step_rows

# Ports, as offsets from PORT_BASE (launch/common.sh uses the same numbers; a unit test checks).
# Every port a job opens on purpose is one of these: nothing of a job then lands on another
# job's block, and SGLang, which otherwise draws its NCCL port at random from 22000-29999, stays
# out of ours. (Ephemeral ports, 32768 and up, lie above every block.)
PORT_SPAN = 64  # ports reserved per job on every node
TRAIN_PORT_OFFSET = 0  # torchrun's master (static rendezvous) on the first training node
ROUTER_PORT_OFFSET = 1  # sglang-router on the first rollout node
ROUTER_METRICS_PORT_OFFSET = 2  # the router's Prometheus exporter
SYNC_PORT_OFFSET = 8  # the NCCL weight-update group on trainer rank 0: the first group and
SYNC_PORTS = 8  # ... each one after a failed sync takes a new port (weight_sync/nccl.py)
SERVER_PORT_OFFSET = 16  # SGLang server i of a node listens on PORT_BASE + 16 + i
SERVER_NCCL_PORT_OFFSET = 40  # ... and its own NCCL group (--nccl-port) uses PORT_BASE + 40 + i
MAX_SERVERS_PER_NODE = SERVER_NCCL_PORT_OFFSET - SERVER_PORT_OFFSET
PORT_BASE_FORMULA = "10000 + (SLURM_JOB_ID % 300) * 64"

SCRIPTS = {"disaggregated": "launch/disaggregated.sbatch", "colocated": "launch/colocated.sbatch"}


# ----------------------------------------------------------------------------------------------
# The plan records
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Server:
    node: int
    index: int  # on its node
    gpus: Tuple[int, ...]
    port_offset: int
    nccl_port_offset: int  # --nccl-port: the server's own NCCL group (its TP ranks)


@dataclass(frozen=True)
class NodeRole:
    index: int
    host: str
    roles: Tuple[str, ...]  # of: "train", "sglang", "router"
    train_ranks: Optional[range]  # global trainer ranks on this node
    servers: Tuple[Server, ...]


@dataclass(frozen=True)
class LaunchPlan:
    mode: str
    nodes: int
    gpus_per_node: int
    rollout_nodes: int  # disaggregated: nodes that run SGLang only; colocated: 0
    train_nodes: int
    layout: ParallelLayout
    engine: str  # sglang | inprocess
    sglang_tp: int  # GPUs of one SGLang server (sglang TP x sglang DP)
    servers_per_node: int
    num_servers: int
    weight_sync: str
    rows_per_step: int
    memory: MemoryEstimate
    node_roles: Tuple[NodeRole, ...]
    commands: Dict[str, str]  # role -> command line, in launch order; "sbatch" first
    env: Dict[str, str]  # what the sbatch script needs from the plan (script-env)
    warnings: Tuple[str, ...] = ()
    port_base: str = "$PORT_BASE"
    cpu: bool = False


# ----------------------------------------------------------------------------------------------
# Layout math (pure)
# ----------------------------------------------------------------------------------------------
def default_rollout_nodes(nodes: int) -> int:
    """Disaggregated default: one rollout node per four nodes, rounded up, at least 1."""
    return max(1, math.ceil(nodes / 4))


def _resolve_weight_sync(configured: str, mode: str, nodes: int) -> Tuple[str, Optional[str]]:
    """(transport, warning or None); raises LayoutError when none can work (module docstring)."""
    if mode == "disaggregated":
        if configured == "tensor":
            return "nccl", None  # CUDA IPC cannot cross nodes: broadcast instead
        return configured, None
    if configured == "nccl":
        raise LayoutError(
            "rollout.weight_sync=nccl cannot work colocated: an SGLang server and trainer rank 0 "
            "share GPU 0, which NCCL refuses in one communicator (use tensor or disk)"
        )
    if configured == "tensor" and nodes > 1:
        return "disk", (
            "colocated on several nodes: weights go by disk (tensor reaches only rank 0's node); "
            "train.output_dir must be on a filesystem every node shares"
        )
    return configured, None


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------
def plan_launch(
    cfg,
    *,
    nodes: int,
    gpus_per_node: int = 8,
    mode: str = "disaggregated",
    rollout_nodes: Optional[int] = None,
    config_path: Optional[str] = None,
    overrides: Sequence[str] = (),
    hosts: Optional[Sequence[str]] = None,
    port_base: Optional[int] = None,
    gpu_memory_gib: float = H100_MEMORY_GIB,
    cpu: bool = False,
) -> LaunchPlan:
    """The launch plan of `cfg` on `nodes` x `gpus_per_node`, or LayoutError with the reason.

    `config_path` / `overrides` appear in the commands (CONFIG when unknown); `hosts` and
    `port_base` replace the placeholders node<i> and $PORT_BASE (the sbatch scripts pass them).
    `cpu`: a CHORD_CPU=1 job (gpus_per_node = processes per node): no GPU memory checks."""
    if mode not in SCRIPTS:
        raise LayoutError(f"--mode must be colocated or disaggregated, got {mode!r}")
    if nodes < 1:
        raise LayoutError(f"--nodes must be >= 1, got {nodes}")
    if gpus_per_node < 1:
        raise LayoutError(f"--gpus-per-node must be >= 1, got {gpus_per_node}")
    if hosts is not None and len(hosts) != nodes:
        raise LayoutError(f"{len(hosts)} host names for {nodes} nodes")
    G = gpus_per_node
    warnings: List[str] = []

    # -- which nodes do what -------------------------------------------------------------------
    configured = cfg.launch.rollout_nodes  # the config's; --rollout-nodes (ROLLOUT_NODES) wins
    if mode == "disaggregated":
        if rollout_nodes is not None:
            R, source = rollout_nodes, "--rollout-nodes"
        elif configured is not None:
            R, source = configured, "launch.rollout_nodes"
        else:
            R, source = default_rollout_nodes(nodes), "--rollout-nodes"
        if R < 1:
            raise LayoutError(f"disaggregated mode needs --rollout-nodes >= 1, got {R}")
        if R >= nodes:
            raise LayoutError(
                f"disaggregated mode needs a training node: {R} rollout node(s) of {nodes} leave none "
                f"(use more --nodes, fewer {source}, or --mode colocated)"
            )
        engine = "sglang"
        train_nodes = nodes - R
    else:
        if rollout_nodes is not None:
            raise LayoutError(
                "--rollout-nodes applies to --mode disaggregated only (colocated runs everything on every node)"
            )
        R = 0
        engine = cfg.rollout.engine
        train_nodes = nodes
        if configured is not None:
            warnings.append(f"launch.rollout_nodes={configured} applies to disaggregated jobs; colocated ignores it")

    # -- trainer layout ------------------------------------------------------------------------
    p = cfg.parallel
    tp, pp, cp = p.tensor, p.pipeline, p.context
    if tp > G or G % tp:
        raise LayoutError(
            f"parallel.tensor={tp} must divide --gpus-per-node={G}: a tensor-parallel group must "
            f"stay inside one node (NVLink)"
        )
    world = train_nodes * G
    mp = tp * pp * cp
    if world % mp:
        raise LayoutError(
            f"TP x PP x CP = {tp} x {pp} x {cp} = {mp} does not divide the {world} trainer GPUs "
            f"({train_nodes} node(s) x {G})"
        )
    if cfg.model.vocab_size % tp:
        raise LayoutError(
            f"model.vocab_size={cfg.model.vocab_size} is not divisible by parallel.tensor={tp} "
            f"(the vocabulary is not padded)"
        )
    layout = ParallelLayout(tp=tp, pp=pp, vpp=p.virtual_pipeline, cp=cp, dp=world // mp, world=world)
    rows = step_rows(cfg)
    if rows < layout.dp:
        raise LayoutError(
            f"DP={layout.dp} ranks but a step can have as few as {rows} rows "
            f"(rollout.prompts_per_step x rollout.samples_per_prompt): every DP rank needs one"
        )

    # -- SGLang --------------------------------------------------------------------------------
    sg_gpus = sglang_gpus_per_server(cfg.sglang)
    servers_per_node = 0
    if engine == "sglang":
        if sg_gpus > G or G % sg_gpus:
            raise LayoutError(
                f"an SGLang server needs {sg_gpus} GPUs (sglang TP x DP), which must divide "
                f"--gpus-per-node={G}: a server must fit in one node"
            )
        servers_per_node = G // sg_gpus
        if servers_per_node > MAX_SERVERS_PER_NODE:
            raise LayoutError(
                f"{servers_per_node} SGLang servers per node exceed the {MAX_SERVERS_PER_NODE} ports "
                f"a job reserves per node"
            )
        if not cfg.sglang.get("model_path"):
            raise LayoutError(
                "sglang.model_path is required: the SGLang servers load the model from it "
                "(a path every rollout node can read)"
            )
    server_nodes = (range(R) if mode == "disaggregated" else range(nodes)) if engine == "sglang" else range(0)
    num_servers = servers_per_node * len(server_nodes)
    weight_sync, warn = _resolve_weight_sync(cfg.rollout.weight_sync, mode, nodes)
    # Checked again here: the plan may have turned tensor into nccl, and config validation
    # skips it when the config's rollout.engine is not sglang.
    problem = weight_sync_layout_problem(cfg.sglang, weight_sync) if engine == "sglang" else None
    if problem:
        raise LayoutError(f"{problem[0]}={problem[1]}")
    if engine != "sglang":
        weight_sync = cfg.rollout.weight_sync  # unused by the in-process engine
    elif warn:
        warnings.append(warn)

    # -- memory --------------------------------------------------------------------------------
    colocated_sglang = mode == "colocated" and engine == "sglang"
    mem = estimate_memory(
        cfg,
        layout,
        gpu_memory_gib=gpu_memory_gib,
        colocated_sglang=colocated_sglang,
        sglang_gpus=sg_gpus if engine == "sglang" else 0,
    )
    if colocated_sglang and "mem_fraction_static" not in cfg.sglang:
        warnings.append(
            "colocated with SGLang but sglang.mem_fraction_static is unset: SGLang then sizes its "
            "KV cache for a GPU of its own and training will not fit; set it (e.g. 0.3)"
        )
    if not cpu:
        if mem.total > mem.budget:
            where = ", with SGLang's static and dynamic memory" if colocated_sglang else ""
            cure = "; colocated: a smaller sglang.mem_fraction_static or rollout.release_sglang_memory"
            raise LayoutError(
                f"estimated training memory {mem.total / GIB:.1f} GiB per GPU ({mem.peak.name}{where}) exceeds the "
                f"{mem.budget / GIB:.1f} GiB available: raise TP/PP, use the distributed "
                f"optimizer, a smaller train.micro_batch_size, or recomputation{cure if colocated_sglang else ''}"
            )
        if engine == "sglang" and mem.sglang_weights > gpu_memory_gib * GIB:
            raise LayoutError(
                f"the SGLang weights alone take {mem.sglang_weights / GIB:.1f} GiB per GPU at "
                f"{sg_gpus} GPU(s) per server, more than {gpu_memory_gib:g} GiB: raise sglang.tp_size"
            )

    # -- node roles ----------------------------------------------------------------------------
    def host(i: int) -> str:
        return hosts[i] if hosts is not None else f"node{i}"

    roles: List[NodeRole] = []
    for i in range(nodes):
        r: List[str] = []
        ranks = None
        if mode == "colocated" or i >= R:
            r.append("train")
            first = (i - R) * G
            ranks = range(first, first + G)
        servers: Tuple[Server, ...] = ()
        if i in server_nodes:
            r.append("sglang")
            servers = tuple(
                Server(
                    i,
                    j,
                    tuple(range(j * sg_gpus, (j + 1) * sg_gpus)),
                    SERVER_PORT_OFFSET + j,
                    SERVER_NCCL_PORT_OFFSET + j,
                )
                for j in range(servers_per_node)
            )
        if engine == "sglang" and i == 0:
            r.append("router")
        roles.append(NodeRole(i, host(i), tuple(r), ranks, servers))

    # -- commands --------------------------------------------------------------------------------
    pb = str(port_base) if port_base is not None else "$PORT_BASE"

    def port(offset: int) -> str:
        return str(port_base + offset) if port_base is not None else f"$((PORT_BASE+{offset}))"

    config = config_path or "CONFIG"
    user = [config, *overrides]
    router_host, train_head = host(0), host(R)
    trainer_overrides: List[str] = []
    if engine == "sglang":
        trainer_overrides = [
            "rollout.engine=sglang",
            f"rollout.router_url=http://{router_host}:{port(ROUTER_PORT_OFFSET)}",
            f"rollout.weight_sync={weight_sync}",
        ]
        if weight_sync == "nccl":
            sync_ports = (port(SYNC_PORT_OFFSET), port(SYNC_PORT_OFFSET + SYNC_PORTS - 1))
            trainer_overrides.append(f"rollout.sync_ports=[{sync_ports[0]},{sync_ports[1]}]")
    env_prefix = [] if rollout_nodes is None or mode != "disaggregated" else [f"ROLLOUT_NODES={R}"]
    if cpu:
        env_prefix += ["CHORD_CPU=1"] + ([] if G == 2 else [f"NPROC_PER_NODE={G}"])
        resources = [f"--nodes={nodes}"]
    else:
        resources = [f"--nodes={nodes}", f"--gpus-per-node={G}"]
    sbatch = "mkdir -p runs/slurm && " + shlex.join(env_prefix + ["sbatch", *resources, SCRIPTS[mode], *user])
    commands: Dict[str, str] = {"sbatch": sbatch}
    if engine == "sglang":
        server_args = sglang_server_args(cfg.sglang)
        for n in roles:
            for s in n.servers:
                commands[f"sglang server {n.index}.{s.index} on {n.host}"] = shell_join(
                    [
                        "$SGLANG_PYTHON",
                        "-m",
                        "sglang.launch_server",
                        "--host",
                        "0.0.0.0",
                        "--port",
                        port(s.port_offset),
                        "--base-gpu-id",
                        str(s.gpus[0]),
                        "--nccl-port",
                        port(s.nccl_port_offset),
                        *server_args,
                    ]
                )
        workers = [f"http://{n.host}:{port(s.port_offset)}" for n in roles for s in n.servers]
        commands[f"router on {router_host}"] = shell_join(
            [
                "$ROUTER_PYTHON",  # not SGLang's: sglang[all] does not install sglang-router
                "-m",
                "sglang_router.launch_router",
                "--host",
                "0.0.0.0",
                "--port",
                port(ROUTER_PORT_OFFSET),
                "--worker-urls",
                *workers,
                *router_args(cfg.sglang, metrics_port=port(ROUTER_METRICS_PORT_OFFSET)),
            ]
        )
    for n in roles:
        if "train" not in n.roles:
            continue
        node_rank = n.index - R
        commands[f"trainer node {node_rank} on {n.host} (ranks {n.train_ranks.start}-{n.train_ranks.stop - 1})"] = (
            shell_join(
                [
                    "$PYTHON",
                    "-m",
                    "torch.distributed.run",
                    f"--nnodes={train_nodes}",
                    f"--node-rank={node_rank}",
                    f"--nproc-per-node={G}",
                    f"--master-addr={train_head}",
                    f"--master-port={port(TRAIN_PORT_OFFSET)}",
                    "-m",
                    "chord_megatron.cli",
                    "train",
                    "--no-progress",
                    config,
                    *trainer_overrides,
                    *overrides,
                ]
            )
        )

    env = {
        "ROLLOUT_NODES": str(R),
        "TRAIN_NODES": str(train_nodes),
        "NPROC_PER_NODE": str(G),
        "ENGINE": engine,
        "SGLANG_GPUS_PER_SERVER": str(sg_gpus),
        "SERVERS_PER_NODE": str(servers_per_node),
        "NUM_SERVERS": str(num_servers),
        "WEIGHT_SYNC": weight_sync,
        "SGLANG_SERVER_ARGS": shlex.join(sglang_server_args(cfg.sglang)) if engine == "sglang" else "",
        # what launch/common.sh hands `chord train` before the user's overrides (real hosts
        # and ports when the script passes them: the plan's trainer command, word for word)
        "TRAIN_OVERRIDES": shlex.join(trainer_overrides),
        "ROUTER_ARGS": shlex.join(
            router_args(
                cfg.sglang, metrics_port=None if port_base is None else str(port_base + ROUTER_METRICS_PORT_OFFSET)
            )
        )
        if engine == "sglang"
        else "",
    }
    return LaunchPlan(
        cpu=cpu,
        mode=mode,
        nodes=nodes,
        gpus_per_node=G,
        rollout_nodes=R,
        train_nodes=train_nodes,
        layout=layout,
        engine=engine,
        sglang_tp=sg_gpus,
        servers_per_node=servers_per_node,
        num_servers=num_servers,
        weight_sync=weight_sync,
        rows_per_step=rows,
        memory=mem,
        node_roles=tuple(roles),
        commands=commands,
        env=env,
        warnings=tuple(warnings),
        port_base=pb,
    )


def shell_join(argv: Sequence[str]) -> str:
    """A command line; arguments are shell-quoted except the script's own variables and
    arithmetic ($PYTHON, $((PORT_BASE+1)), ...), which are shown as the script writes them
    (in double quotes where the word also holds characters the shell would glob)."""
    return " ".join(_shell_word(a) for a in argv)


def _shell_word(a: str) -> str:
    if _SCRIPT_VAR.fullmatch(a):
        return a
    if _PORT_LIST.fullmatch(a):
        return f'"{a}"'
    return shlex.quote(a)


_SCRIPT_VAR = re.compile(r"([\w.-]+=)?(\$[A-Z_]+|(http://[\w.-]+:)?\$\(\(PORT_BASE\+\d+\)\))")
_PORT_LIST = re.compile(r"[\w.-]+=\[\$\(\(PORT_BASE\+\d+\)\),\$\(\(PORT_BASE\+\d+\)\)\]")


def sglang_server_args(sglang: Mapping[str, Any]) -> List[str]:
    """The `sglang:` section as SGLang server flags, without what each server gets on its own
    (--host, --port, --base-gpu-id, --nccl-port) and without the router's `router:` options."""
    from ...rollout.sglang.router import cli_flags

    own = ("router", "host", "port", "base_gpu_id", "nccl_port")
    options = {k: v for k, v in sglang.items() if k not in own}
    return cli_flags(options)


def router_args(sglang: Mapping[str, Any], *, metrics_port: Optional[str] = None) -> List[str]:
    """sglang-router flags: the project's defaults (rollout/sglang/router.py) and `sglang.router`, without
    --host, --port and --worker-urls, which the launch script sets. The Prometheus exporter gets
    the job's port (PORT_BASE + 2) unless `sglang.router` names one."""
    from ...rollout.sglang.router import ROUTER_DEFAULTS, cli_flags

    options = dict(ROUTER_DEFAULTS)
    options.update(dict(sglang.get("router") or {}))
    for key in ("host", "port", "worker_urls"):
        options.pop(key, None)
    options.setdefault("prometheus_host", "0.0.0.0")
    if metrics_port is not None:
        options.setdefault("prometheus_port", metrics_port)
    return cli_flags(options)
