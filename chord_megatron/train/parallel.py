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
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from ..config import ConfigError, ParallelConfig
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


def resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return backend


def init_distributed(backend: str = "auto", timeout_minutes: int = 30) -> None:
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

    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
