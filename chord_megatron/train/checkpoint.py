"""Checkpoints with megatron.core.dist_checkpointing: model, optimizer, LR schedule, step, RNG
and the caller's data position, written atomically.

Layout under a checkpoint root:

    root/step_00000010/     one dist-checkpoint (torch_dist format)
    root/step_00000020/
    root/latest             "step_00000020": the newest *complete* checkpoint

A checkpoint is written to `root/.tmp.step_N/` and renamed when every rank has finished, and
only then does `latest` (replaced atomically) point at it, so a crash mid-save leaves the
previous checkpoint in charge. Older checkpoints beyond `keep_last` are deleted afterwards.

Model weights are stored per parameter in global coordinates, so they load onto any TP / PP /
DP / CP layout. RNG states are stored per rank and restored only onto the layout that saved
them. The distributed optimizer's state is stored in one of two formats
(checkpoint.optimizer_format):
* `dp_reshardable` (default): every rank writes its own shard; restored onto the same layout
  only (elsewhere Adam restarts, with a warning);
* `fully_reshardable`: each data-parallel group gathers its state while saving and writes it in
  global coordinates, like the weights; restored onto any layout. Saving all-gathers the
  optimizer state of a TP x PP shard onto every rank of its data-parallel group (megatron-core's
  memory-efficient variant gathers onto one rank over gloo side groups, which we do not create).
(megatron-core 0.16.1's `fully_sharded_model_space` relies on the removed
`ShardedTensor.flattened_range` and cannot be used.)

Workarounds for megatron-core 0.16.1 (see the platform notes):
* loading the distributed optimizer needs its Adam states to exist already: they are
  initialised with a zero-gradient step (which moves no weight: the update of a zero
  gradient with zero moments is 0; the loaded values overwrite everything anyway);
* torch Adam's per-parameter `step` comes back as that dummy step's 1, so the saved count is
  stored separately and written back (bias correction depends on it);
* loading runs under torch.no_grad (it copies into leaf parameters);
* before the first update the distributed optimizer cannot produce a state dict (it asserts
  one Adam step count): such a checkpoint is saved without optimizer state
  (`optimizer_state: false`) and loads with a fresh optimizer;
* `fully_reshardable` loading hands DistributedOptimizer._set_main_param_and_optimizer_states
  every state but torch Adam's per-parameter `step`, which that method then looks up
  (KeyError 'step'): compat/optimizer_load.py hands it the destination's own step for the load,
  and the saved count is written afterwards (tests/unit/test_compat_pins.py pins the Megatron
  code this relies on).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..config import CHOICES
from ..errors import ChordError
from .compat import optimizer_load
from .compat.ckpt_warnings import quiet_checkpoint_load
from .parallel import ParallelState

LATEST = "latest"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
OPTIMIZER_FORMATS = CHOICES["checkpoint.optimizer_format"]


def step_dirname(step: int) -> str:
    return f"step_{step:08d}"


def _layout(par: ParallelState) -> Dict[str, Optional[int]]:
    return {"tp": par.tp, "pp": par.pp, "vpp": par.vpp, "dp": par.dp, "cp": par.cp}


def _rng_state() -> Dict[str, Any]:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def _sharded_state_dict(
    model,
    optimizer,
    par: ParallelState,
    *,
    with_rng: bool,
    is_loading: bool = True,
    optimizer_format: str = "dp_reshardable",
) -> dict:
    """Model chunks, optimizer (unless None) and this rank's RNG as one sharded state dict."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    sd: Dict[str, Any] = {}
    for i, chunk in enumerate(model):
        # DDP's wrapper adds nothing to save; Float16Module (bf16) forwards to the GPTModel.
        sd["model" if len(model) == 1 else f"model{i}"] = chunk.module.sharded_state_dict()
    model_sd = dict(sd)
    if optimizer is not None:
        if is_loading:
            optimizer_load.init_optimizer_states(optimizer)
        metadata = {"distrib_optim_sharding_type": optimizer_format}
        sd["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=metadata)
    if with_rng:
        # One RNG state per rank: context-parallel ranks count as data-parallel ones here, which
        # keeps the key of CP = 1 checkpoints unchanged.
        dp_cp, dp_cp_rank = par.dp * par.cp, par.dp_rank * par.cp + par.cp_rank
        sd["rng"] = ShardedObject(
            "rng_state", _rng_state(), (par.pp, par.tp, dp_cp), (par.pp_rank, par.tp_rank, dp_cp_rank), replica_id=0
        )
    return sd


def save_checkpoint(
    root: str,
    step: int,
    model,
    optimizer,
    scheduler,
    par: ParallelState,
    *,
    data_state: Optional[Mapping[str, Any]] = None,
    keep_last: Optional[int] = None,
    optimizer_format: str = "dp_reshardable",
) -> str:
    """Write checkpoint `step` under `root` (collective); returns its directory. `data_state`
    is stored as given (it must be the same on every rank)."""
    if optimizer_format not in OPTIMIZER_FORMATS:
        raise ValueError(f"optimizer_format must be one of {OPTIMIZER_FORMATS}, got {optimizer_format!r}")
    from megatron.core import dist_checkpointing

    from .compat.ckpt_writer import InProcessTorchDistSaveStrategy

    final = os.path.join(root, step_dirname(step))
    tmp = os.path.join(root, ".tmp." + step_dirname(step))
    if par.rank == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # debris of an interrupted save
        os.makedirs(tmp)
    dist.barrier()

    # Before the first update Adam has no state, and megatron-core's distributed optimizer
    # cannot describe one (an assertion in DistributedOptimizer.state_dict): a model fresh from
    # model.hf_path or a random init is saved without optimizer state, recorded as such, and
    # loading it starts Adam afresh, which is exactly the state it was saved in.
    has_state = any(s is not None for s in optimizer_load.adam_steps(optimizer))
    sd = _sharded_state_dict(
        model, optimizer if has_state else None, par, is_loading=False, with_rng=True, optimizer_format=optimizer_format
    )
    sd.update(
        format_version=FORMAT_VERSION,
        step=int(step),
        layout=_layout(par),
        optimizer_format=optimizer_format,
        optimizer_state=has_state,
        distributed_optimizer=optimizer_load.is_distributed(optimizer),
        scheduler=scheduler.state_dict(),
        adam_steps=optimizer_load.adam_steps(optimizer),
        data_state=dict(data_state or {}),
    )
    dist_checkpointing.save(sd, tmp, sharded_strategy=InProcessTorchDistSaveStrategy())
    dist.barrier()
    if par.rank == 0:
        shutil.rmtree(final, ignore_errors=True)  # re-saving a step replaces it
        os.rename(tmp, final)
        _write_latest(root, step_dirname(step))
        if keep_last:
            _prune(root, keep_last, keep=step_dirname(step))
    dist.barrier()
    return final


def _write_latest(root: str, name: str) -> None:
    tmp = os.path.join(root, LATEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(root, LATEST))


def list_checkpoints(root: str) -> List[Tuple[int, str]]:
    """(step, directory) of the complete checkpoints under `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), os.path.join(root, n)) for n in os.listdir(root) if (m := _STEP_DIR.match(n))]
    return sorted(found)


def _prune(root: str, keep_last: int, keep: str) -> None:
    for _, path in list_checkpoints(root)[:-keep_last]:
        if os.path.basename(path) != keep:
            shutil.rmtree(path, ignore_errors=True)


class CheckpointNotFound(ChordError, FileNotFoundError):
    """A checkpoint path (--resume's root, export-hf's CHECKPOINT) that holds none: one line, exit 2."""

    exit_code, kind = 2, "checkpoint"


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory: `path` itself, or what `path/latest` names."""
    pointer = os.path.join(path, LATEST)
    if os.path.isfile(pointer):
        with open(pointer) as f:
            named = os.path.join(path, f.read().strip())
        if not os.path.isfile(os.path.join(named, "metadata.json")):
            raise CheckpointNotFound(f"{pointer} names {named}, which holds no checkpoint")
        return named
    if os.path.isfile(os.path.join(path, "metadata.json")):
        return path
    raise CheckpointNotFound(f"{path}: neither a checkpoint nor a checkpoint root with a '{LATEST}' file")


def load_checkpoint(
    path: str, model, optimizer, scheduler, par: ParallelState, *, load_optimizer: Optional[bool] = None
) -> Tuple[int, Dict[str, Any]]:
    """Restore from `path` (a checkpoint, or a root with `latest`); collective. Returns
    (step, data_state).

    The model loads onto any TP / PP / DP / CP layout, the RNG states only onto the layout
    that saved them. The optimizer state loads onto the same layout, and onto any layout when
    it was saved as `fully_reshardable` by the same kind of optimizer (distributed or not);
    `load_optimizer` None means "whenever it can". Without optimizer state the Adam moments
    start from zero and the fp32 main weights are taken from the loaded model. The LR
    schedule position is restored either way.
    """
    from megatron.core import dist_checkpointing

    directory = resolve_checkpoint(path)
    common = dist_checkpointing.load_common_state_dict(directory)
    if common.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory}: checkpoint format {common.get('format_version')} != {FORMAT_VERSION}")
    same_layout = common["layout"] == _layout(par)
    optimizer_format = common.get("optimizer_format", "dp_reshardable")
    same_optimizer = common.get(
        "distributed_optimizer", optimizer_load.is_distributed(optimizer)
    ) == optimizer_load.is_distributed(optimizer)
    optimizer_fits = same_optimizer and (same_layout or optimizer_format == "fully_reshardable")
    if not common.get("optimizer_state", True):
        # Saved before the first update (see save_checkpoint): there is no Adam state to load,
        # and a fresh optimizer is the state that was saved, on any layout.
        load_optimizer = False
    elif load_optimizer is None:
        load_optimizer = optimizer_fits
        if not optimizer_fits and par.rank == 0:
            warnings.warn(
                f"{directory}: saved on layout {common['layout']} with a {optimizer_format} optimizer state, loading "
                f"onto {_layout(par)}: model weights only, the optimizer state starts afresh (save with "
                "checkpoint.optimizer_format=fully_reshardable to carry it across layouts)",
                stacklevel=2,
            )
    elif load_optimizer and not optimizer_fits:
        raise ValueError(
            f"{directory}: the {optimizer_format} optimizer state of layout {common['layout']} "
            f"cannot load onto {_layout(par)}"
        )
    with torch.no_grad():
        sd = _sharded_state_dict(
            model, optimizer if load_optimizer else None, par, with_rng=same_layout, optimizer_format=optimizer_format
        )
        with quiet_checkpoint_load():
            loaded = dist_checkpointing.load(sd, directory)
        for i, chunk in enumerate(model):
            chunk.module.load_state_dict(loaded["model" if len(model) == 1 else f"model{i}"], strict=True)
        if load_optimizer:
            optimizer_load.load_optimizer(optimizer, loaded["optimizer"], optimizer_format, common["adam_steps"])
        else:
            optimizer.reload_model_params()
        scheduler.load_state_dict(common["scheduler"])
    if same_layout:
        _set_rng_state(loaded["rng"])
    return int(common["step"]), dict(common["data_state"])
