"""The transport rollout.weight_sync names, built from the config."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def transport_from_config(cfg):
    """tensor | nccl | disk -> a callable (engine, named_hf_tensors, version) -> SyncStats."""
    import torch

    r = cfg.rollout
    if r.weight_sync == "tensor":
        from .tensor import TensorSync

        return TensorSync(bucket_mb=r.sync_bucket_mb, server_visible_devices=r.server_visible_devices)
    if r.weight_sync == "nccl":
        from .nccl import NcclSync

        # The servers connect to the trainer's rank 0: torchrun's MASTER_ADDR is that host. Its
        # port comes from rollout.sync_ports when set (launch/ gives the job's reserved range).
        address = os.environ.get("MASTER_ADDR") or socket.gethostbyname(socket.gethostname())
        return NcclSync(
            address,
            None,
            port_range=tuple(r.sync_ports) or None,
            bucket_mb=r.sync_bucket_mb,
            backend="nccl" if torch.cuda.is_available() else "gloo",
        )
    if r.weight_sync == "disk":
        from ..hf.config import hf_config
        from .disk import DiskSync

        return DiskSync(
            Path(cfg.train.output_dir) / "hf_weights", bucket_mb=r.sync_bucket_mb, config=hf_config(cfg.model).to_dict()
        )
    raise ValueError(f"rollout.weight_sync must be tensor, nccl or disk, got {r.weight_sync!r}")


def peer_feed_from_config(cfg):
    """What a rank other than 0 does with the HF tensors of a sync: None (nothing: only rank 0
    sends), or, for the tensor transport to SGLang servers, a callable that feeds the servers'
    TP ranks on this rank's GPU (tensor.feed_tensor_sync)."""
    import torch.distributed as dist

    r = cfg.rollout
    if r.engine != "sglang" or r.weight_sync != "tensor" or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    from .tensor import feed_tensor_sync

    return lambda named: feed_tensor_sync(named, bucket_mb=r.sync_bucket_mb)
