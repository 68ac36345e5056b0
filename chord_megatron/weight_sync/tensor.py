"""Colocated transport: SGLang servers on the trainer's node receive CUDA-IPC handles.

/update_weights_from_tensor carries, per server, one serialized payload per tensor-parallel
rank of that server (each rank unpickles only its own copy, which keeps CUDA-IPC reference
counts right). A payload is the ForkingPickler pickle of a list of (HF name, tensor), base64:
for CUDA tensors it holds IPC handles, not the data, so the tensors must stay alive until the
server answers -- this module keeps each bucket referenced until then.

Single-node only: the process that calls it must share GPUs with every server it sends to.
"""

from __future__ import annotations

import asyncio
import base64
import io
from multiprocessing.reduction import ForkingPickler
from typing import Callable, Iterable, Optional, Tuple

import torch

from .buckets import Bucket, SyncStats, bucketize, check_servers_take, update_session, with_last

Serializer = Callable[[Bucket], str]


def forking_pickle_b64(bucket: Bucket) -> str:
    """ForkingPickler + base64, the format SGLang's MultiprocessingSerializer reads."""
    import torch.multiprocessing  # noqa: F401 - registers the tensor reductions with ForkingPickler

    buf = io.BytesIO()
    ForkingPickler(buf).dump(list(bucket))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def default_serializer() -> Serializer:
    """SGLang's own serializer where SGLang is fully installed with CUDA: its patched CUDA
    reduction sends device UUIDs, which survive different CUDA_VISIBLE_DEVICES on both sides."""
    if torch.cuda.is_available():
        try:
            from sglang.srt.utils import MultiprocessingSerializer
            from sglang.srt.utils.patch_torch import monkey_patch_torch_reductions
        except ImportError:
            return forking_pickle_b64
        monkey_patch_torch_reductions()
        return lambda bucket: MultiprocessingSerializer.serialize(list(bucket), output_str=True)
    return forking_pickle_b64


async def _gather(*coros):
    return await asyncio.gather(*coros)


class TensorSync:
    """Callable transport for SGLangEngine(weight_sync=TensorSync(...))."""

    def __init__(
        self, bucket_mb: float = 512, serializer: Optional[Serializer] = None, device: Optional[torch.device] = None
    ):
        self.max_bytes = int(bucket_mb * 2**20)
        self.serializer = serializer
        self.device = device  # where tensors must live for the servers (a CUDA device in production)

    def __call__(self, engine, named: Iterable[Tuple[str, torch.Tensor]], version: str) -> SyncStats:
        client = engine.client
        serialize = self.serializer or default_serializer()
        infos = engine.run(client.server_infos())
        check_servers_take(infos, "tensor")
        tp = {url: int(info.get("tp_size", 1) or 1) for url, info in infos.items()}
        stats = SyncStats("tensor")
        with update_session(engine):
            # Buckets are gathered in this (the caller's) thread: the tensors may come from a
            # collective iterator that must run where the trainer runs it.
            for bucket, last in with_last(bucketize(named, self.max_bytes)):
                if self.device is not None:
                    bucket = [(n, t.to(self.device, non_blocking=True)) for n, t in bucket]
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                payload = {url: [serialize(bucket) for _ in range(n)] for url, n in tp.items()}
                engine.run(
                    _gather(
                        *(
                            client.update_weights_from_tensor(
                                url, payload[url], weight_version=version if last else None, flush_cache=last
                            )
                            for url in client.worker_urls
                        )
                    )
                )
                stats.add(bucket)
                del bucket, payload  # the servers have copied: IPC handles may be released
        return stats.finish()
