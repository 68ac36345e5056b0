"""Disk transport: write a Hugging Face checkpoint folder, then /update_weights_from_disk.

For servers that share a file system with the trainer but neither its GPUs (tensor.py) nor a
network path for a broadcast group (nccl.py). Each version goes to <directory>/v<version>/ as
safetensors shards of at most the bucket size plus model.safetensors.index.json (and the
model's config.json when given), so any HF loader, SGLang's included, reads it. The route
needs no begin/end_weight_update session. Older version folders beyond `keep_last` are removed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

import torch

from .buckets import SyncStats, bucketize, tensor_bytes


def write_hf_checkpoint(
    folder: Path,
    named: Iterable[Tuple[str, torch.Tensor]],
    *,
    max_shard_bytes: int,
    config: Optional[Dict[str, Any]] = None,
    stats: Optional[SyncStats] = None,
) -> Path:
    """Safetensors shards `model-0000i-of-0000n.safetensors` + the index (+ config.json)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")  # a reader never sees a half-written folder
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards = []
    for i, bucket in enumerate(bucketize(named, max_shard_bytes)):
        name = f"shard-{i:05d}.safetensors"
        save_file({n: t.detach().contiguous().cpu() for n, t in bucket}, str(tmp / name), metadata={"format": "pt"})
        shards.append((name, [n for n, _ in bucket], sum(tensor_bytes(t) for _, t in bucket)))
        if stats is not None:
            stats.add(bucket)
    total = len(shards)
    weight_map, size = {}, 0
    for i, (old, names, nbytes) in enumerate(shards):
        new = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        (tmp / old).rename(tmp / new)
        weight_map.update({n: new for n in names})
        size += nbytes
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=1)
    )
    if config is not None:
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def read_hf_checkpoint(folder: Path) -> Dict[str, torch.Tensor]:
    """All tensors of a folder written by write_hf_checkpoint (for checks and tests)."""
    from safetensors.torch import load_file

    index = json.loads((Path(folder) / "model.safetensors.index.json").read_text())
    out: Dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(load_file(str(Path(folder) / shard)))
    return out


class DiskSync:
    """Callable transport for SGLangEngine(weight_sync=DiskSync(...)). `directory` must be
    visible under the same path to every server."""

    def __init__(
        self,
        directory: str | Path,
        *,
        bucket_mb: float = 512,
        config: Optional[Dict[str, Any]] = None,
        keep_last: int = 2,
    ):
        self.directory = Path(directory)
        self.max_bytes = int(bucket_mb * 2**20)
        self.config = config  # the model's HF config.json contents
        self.keep_last = max(1, keep_last)

    def __call__(self, engine, named: Iterable[Tuple[str, torch.Tensor]], version: str) -> SyncStats:
        stats = SyncStats("disk")
        folder = write_hf_checkpoint(
            self.directory / f"v{version}", named, max_shard_bytes=self.max_bytes, config=self.config, stats=stats
        )
        engine.run(engine.client.update_weights_from_disk(str(folder), weight_version=version))
        self._prune(keep=folder)
        return stats.finish()

    def _prune(self, keep: Path) -> None:
        folders = sorted(
            (p for p in self.directory.glob("v*") if p.is_dir() and not p.name.endswith(".partial")),
            key=lambda p: p.stat().st_mtime,
        )
        for old in folders[: -self.keep_last]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)
