"""Process groups for TP / PP (with virtual stages) / CP / DP, in one object.

megatron-core keeps its groups in module globals (`parallel_state`), and parts of it (the
distributed optimizer, dist-checkpointing) read them from there, so we initialise those
globals; but everything *we* call gets the groups explicitly, from a `ParallelState`, through
Megatron's `ProcessGroupCollection` (`ps.pg`) or as single groups (`ps.tp_group`, ...).

Rank order is Megatron's default "tp-cp-ep-dp-pp": tensor-parallel ranks are adjacent, the
pipeline stage changes slowest.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from ..config import ConfigError, ParallelConfig
from ..errors import ChordError
from ..net import free_port
from .compat.cpu_patches import apply_cpu_patches, check_megatron_version


@dataclass(frozen=True)
class ParallelState:
    """Sizes, ranks and groups of this process. `pg` is Megatron's ProcessGroupCollection."""

    world_size: int
    rank: int
    tp: int
    pp: int
    vpp: Optional[int]  # model chunks per pipeline rank (None = not interleaved)
    cp: int
    dp: int
    tp_rank: int
    pp_rank: int
    cp_rank: int
    dp_rank: int
    backend: str
    device: torch.device
    pg: object  # megatron.core.process_groups_config.ProcessGroupCollection

    @property
    def tp_group(self):
        return self.pg.tp

    @property
    def pp_group(self):
        return self.pg.pp

    @property
    def cp_group(self):
        return self.pg.cp

    @property
    def dp_group(self):
        return self.pg.dp

    @property
    def dp_cp_group(self):
        """Gradients are reduced over data- and context-parallel ranks together."""
        return self.pg.dp_cp

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def num_model_chunks(self) -> int:
        return self.vpp or 1


def is_rank0() -> bool:
    """Whether this process is the job's rank 0: the one that owns the rollout engine, the
    rewards, the logs and the files every rank would otherwise write. Asked of the default
    process group once it exists, and of torchrun's RANK before (a lone process is rank 0)."""
    if dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


class DeviceError(ChordError, RuntimeError):
    """train.device asks for a GPU this process cannot use."""

    exit_code, kind = 2, "device error"


def require_device(device: str) -> None:
    """Stop at once, with the reason, when train.device=cuda and torch sees no GPU: otherwise
    every later `cuda.is_available()` check quietly picks gloo, fp32 and the CPU."""
    if device != "cuda" or torch.cuda.is_available():
        return
    raise DeviceError(
        f"train.device=cuda, but torch sees no CUDA GPU on {socket.gethostname()}: {why_no_cuda()}; "
        "set train.device=auto to run on the CPU instead"
    )


def set_cpu_threads(threads: int) -> None:
    """train.cpu_threads: torch's intra-op threads for a trainer on the CPU (0 = leave torch's
    default). On a GPU the trainer's CPU threads only launch kernels: the setting is ignored."""
    if threads and not torch.cuda.is_available():
        torch.set_num_threads(threads)


def why_no_cuda() -> str:
    """What keeps torch off the GPU, as far as this process can tell."""
    build = f"torch {torch.__version__}"
    if torch.version.cuda is None:
        return f"{build} is a CPU-only build (install a CUDA build of torch)"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return "CUDA_VISIBLE_DEVICES is empty (hides every GPU)"
    driver = nvidia_driver_version()
    try:
        torch.cuda.init()  # raises with CUDA's own reason (no driver, driver too old, ...)
        reason = "torch.cuda.device_count() is 0"
    except Exception as e:  # noqa: BLE001 - any failure here is the reason we report
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    needs = "; CUDA 13 builds need driver R580 or newer" if torch.version.cuda.startswith("13") else ""
    return f"{reason} ({build} is built for CUDA {torch.version.cuda}; NVIDIA driver: {driver or 'none found'}{needs})"


def nvidia_driver_version() -> str:
    """The loaded NVIDIA kernel module's version ('' without one), read from /proc: asking
    CUDA would need the driver this is meant to diagnose."""
    try:
        text = open("/proc/driver/nvidia/version").read()
    except OSError:
        return ""
    for word in text.split():
        if word.count(".") >= 1 and word.replace(".", "").isdigit():
            return word
    return ""


def resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return backend


def init_distributed(backend: str = "auto", timeout_minutes: float = 30) -> None:
    """Join the default process group from torchrun's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT); without it, start a group of one on a free local port."""
    if dist.is_initialized():
        return
    backend = resolve_backend(backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend=backend, timeout=timeout)
    else:
        port = free_port()
        dist.init_process_group(
            backend=backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1, timeout=timeout
        )


_OBJECT_GROUP = None  # (group, timeout): see object_group()


def object_group(timeout: Optional[datetime.timedelta] = None):
    """The group rank 0's Python objects (a step's batch, an evaluation's probes) are broadcast
    in: gloo over the whole world, with a timeout of its own (parallel.rank0_wait_minutes).

    Ranks 1..N wait there while rank 0 rolls out and evaluates. On the default group that wait
    would be an NCCL collective -- a kernel spinning on a GPU that a colocated SGLang server is
    using -- and the job would die when collect + eval outlasts NCCL's 30-minute timeout; a
    gloo wait sleeps on a socket. Created by init_parallel (collective: every rank), or here on
    first use with `timeout` (default: the config's default). None in a world of one."""
    global _OBJECT_GROUP
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    if _OBJECT_GROUP is None:
        timeout = timeout or datetime.timedelta(minutes=ParallelConfig.rank0_wait_minutes)
        _OBJECT_GROUP = (dist.new_group(backend="gloo", timeout=timeout), timeout)
    return _OBJECT_GROUP[0]


def rank0_object(obj):
    """Rank 0's `obj` on every rank, through the object group (a no-op in a world of one)."""
    group = object_group()
    if group is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def gather_to_rank0(obj) -> Optional[list]:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere), through the object group."""
    group = object_group()
    if group is None:
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0, group=group)
    return out


def init_parallel(pcfg: ParallelConfig, *, seed: int = 1234) -> ParallelState:
    """Create Megatron's model-parallel groups for `pcfg` on the current world and seed the
    tensor-parallel RNG tracker. The data-parallel size is what the world leaves:
    world = tp * pp * cp * dp. Re-initialising with another layout first tears down the old
    groups (tests compare layouts inside one set of processes)."""
    from megatron.core import parallel_state as mpu
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    # On GPU too: the checkpoint, gradient-finalisation and CP workarounds lean on 0.16.1's internals.
    check_megatron_version()
    apply_cpu_patches()
    init_distributed(pcfg.backend)
    world = dist.get_world_size()
    model_parallel = pcfg.tensor * pcfg.pipeline * pcfg.context
    if world % model_parallel:
        raise ConfigError(
            "parallel",
            f"tensor x pipeline x context = {pcfg.tensor} x {pcfg.pipeline} x {pcfg.context}",
            f"needs a multiple of {model_parallel} processes, this job has {world}: "
            f"start it with `chord train --nproc {model_parallel}` (or torchrun --nproc-per-node)",
        )
    if pcfg.sequence_parallel and not torch.cuda.is_available():
        raise ValueError("parallel.sequence_parallel needs CUDA (megatron's local spec has no CPU path for it)")
    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    mpu.initialize_model_parallel(
        tensor_model_parallel_size=pcfg.tensor,
        pipeline_model_parallel_size=pcfg.pipeline,
        virtual_pipeline_model_parallel_size=pcfg.virtual_pipeline,
        context_parallel_size=pcfg.context,
        # Side gloo groups serve checkpoint formats we do not use (see train/checkpoint.py).
        create_gloo_process_groups=False,
    )
    pg = ProcessGroupCollection.use_mpu_process_groups()
    object_group(datetime.timedelta(minutes=pcfg.rank0_wait_minutes))
    tp_rank = mpu.get_tensor_model_parallel_rank()
    pp_rank = mpu.get_pipeline_model_parallel_rank()
    # As Megatron-LM does: pipeline stages draw different initial weights (otherwise every
    # stage would build its layers from the same random stream).
    model_parallel_cuda_manual_seed(seed + 100 * pp_rank, tp_rank=tp_rank, ep_rank=0, etp_rank=0, force_reset_rng=True)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return ParallelState(
        world_size=world,
        rank=dist.get_rank(),
        tp=pcfg.tensor,
        pp=pcfg.pipeline,
        vpp=pcfg.virtual_pipeline,
        cp=pcfg.context,
        dp=world // model_parallel,
        tp_rank=tp_rank,
        pp_rank=pp_rank,
        cp_rank=mpu.get_context_parallel_rank(),
        dp_rank=mpu.get_data_parallel_rank(),
        backend=dist.get_backend(),
        device=device,
        pg=pg,
    )


def destroy_parallel() -> None:
    """Tear down Megatron's groups and the default process group (end of a run or test)."""
    from megatron.core import parallel_state as mpu

    global _OBJECT_GROUP
    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()  # every group of the world, the object group too
    _OBJECT_GROUP = None
