"""Size-bounded buckets of named tensors, and the numbers every sync reports.

A bucket bounds the memory a transport holds at once (a serialized copy, a broadcast batch, a
safetensors shard). A tensor larger than the bound travels alone; tensors are never split, so
a consumer always receives whole parameters.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Tuple

import torch

from ..config_checks import weight_sync_layout_problem
from ..errors import ChordError

Bucket = List[Tuple[str, torch.Tensor]]


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def bucketize(named: Iterable[Tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[Bucket]:
    """Consecutive groups of (name, tensor), each at most `max_bytes` unless one tensor alone is
    larger. Order is kept; the input is consumed lazily."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    bucket: Bucket = []
    size = 0
    for name, t in named:
        n = tensor_bytes(t)
        if bucket and size + n > max_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += n
    if bucket:
        yield bucket


def with_last(items: Iterable) -> Iterator[Tuple[object, bool]]:
    """(item, is_last) with one item of look-ahead: a transport tags only its last bucket with
    the new weight version, so a half-synced server never claims it."""
    it = iter(items)
    try:
        prev = next(it)
    except StopIteration:
        return
    for item in it:
        yield prev, False
        prev = item
    yield prev, True


@dataclass
class SyncStats:
    """What one sync moved and how fast (bytes are the tensors' bytes, once, not per server)."""

    transport: str
    tensors: int = 0
    buckets: int = 0
    bytes: int = 0
    seconds: float = 0.0
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    def add(self, bucket: Bucket) -> None:
        self.buckets += 1
        self.tensors += len(bucket)
        self.bytes += sum(tensor_bytes(t) for _, t in bucket)

    def finish(self) -> "SyncStats":
        self.seconds = time.perf_counter() - self._t0
        return self

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else float("inf")

    def as_metrics(self, prefix: str = "sync/") -> Dict[str, float]:
        return {
            f"{prefix}seconds": self.seconds,
            f"{prefix}bytes": float(self.bytes),
            f"{prefix}gb_per_s": self.bytes_per_s / 1e9,
            f"{prefix}tensors": float(self.tensors),
            f"{prefix}buckets": float(self.buckets),
        }


@contextlib.contextmanager
def update_session(engine):
    """begin_weight_update ... end_weight_update around a transport's buckets, from the
    trainer's thread (the buckets come from a collective iterator that must run there). If the
    body fails, a failure to end the session is not raised over the original error."""
    engine.run(engine.client.begin_weight_update())
    try:
        yield
    except BaseException:
        try:
            engine.run(engine.client.end_weight_update())
        except Exception:
            pass
        raise
    engine.run(engine.client.end_weight_update())


class WeightSyncError(ChordError, RuntimeError):
    """A transport cannot work with these servers or this host (the message says why and what instead)."""


def check_servers_take(infos: Dict[str, Dict], transport: str) -> None:
    """Refuse servers (their /server_info) that SGLang cannot update by `transport`, before a
    session opens: the same rule config validation applies to the sglang: section."""
    for url, info in infos.items():
        problem = weight_sync_layout_problem(info, transport)
        if problem:
            key, reason = problem
            raise WeightSyncError(f"{url} runs with {key.split('.')[-1]}={reason}")
