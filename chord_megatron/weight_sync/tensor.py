"""Colocated transport: SGLang servers on the trainer's node receive CUDA-IPC handles.

/update_weights_from_tensor carries, per server, one serialized payload per tensor-parallel
rank of that server (each rank unpickles only its own copy, which keeps CUDA-IPC reference
counts right). A payload is the ForkingPickler pickle of a list of (HF name, tensor), base64:
for CUDA tensors it holds IPC handles, not the data, so the tensors must stay alive until the
server answers.

Each TP rank's payload comes from the trainer rank on that TP rank's GPU (gpu_seats.py), so
opening the handles costs no receiver a CUDA context on another GPU; the handles name the
device by UUID, which holds whatever CUDA_VISIBLE_DEVICES each side runs with. Every trainer
rank therefore takes part in a sync: rank 0 (TensorSync, behind the rollout engine) gathers
where the ranks sit, decides who feeds whom (or refuses the layout, on every rank), then per
bucket gathers the other ranks' payloads, posts them, and tells every rank when the servers
have answered -- only then do the ranks let go of the bucket. The other ranks run
feed_tensor_sync over the same tensors. The exchange goes through the gloo object group
(train/parallel.py), never NCCL.

Single-node: the servers must share a node, and GPUs, with the trainer ranks that feed them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
from multiprocessing.reduction import ForkingPickler
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from ..train.parallel import gather_to_rank0, rank0_object
from .buckets import Bucket, SyncStats, WeightSyncError, bucketize, check_servers_take, update_session, with_last
from .gpu_seats import feeders, this_seat, visible_devices

Serializer = Callable[[Bucket], str]

# Position of the device in torch.multiprocessing.reductions.rebuild_cuda_tensor's arguments
# (SGLang's patch_torch rewrites the same one).
CUDA_DEVICE_ARG = 6


def cuda_uuid(index: int) -> str:
    """A CUDA device's UUID as SGLang's receiving side compares it (str of torch's property)."""
    return str(torch.cuda.get_device_properties(index).uuid)


def device_arg_as_uuid(rebuild, args: tuple, uuid_of: Optional[Callable[[int], str]] = None) -> tuple:
    """A tensor's reduction with its CUDA device index replaced by the device's UUID: an index
    means a different GPU to a process with another CUDA_VISIBLE_DEVICES. SGLang 0.5.23's
    servers patch rebuild_cuda_tensor to accept either (sglang.srt.utils.patch_torch)."""
    if "rebuild_cuda_tensor" in getattr(rebuild, "__name__", "") and isinstance(args[CUDA_DEVICE_ARG], int):
        uuid = (uuid_of or cuda_uuid)(args[CUDA_DEVICE_ARG])
        args = (*args[:CUDA_DEVICE_ARG], uuid, *args[CUDA_DEVICE_ARG + 1 :])
    return args


def _reduce_with_uuid(reduce):
    def reduce_tensor(tensor):
        rebuild, args = reduce(tensor)
        return rebuild, device_arg_as_uuid(rebuild, args)

    return reduce_tensor


def forking_pickle_b64(bucket: Bucket) -> str:
    """ForkingPickler + base64, the format SGLang's MultiprocessingSerializer reads; CUDA
    tensors go as IPC handles with their device as a UUID (what SGLang's own serializer sends
    with its patch applied, without needing SGLang in the trainer's environment)."""
    import torch.multiprocessing  # noqa: F401 - registers the tensor reductions with ForkingPickler

    buf = io.BytesIO()
    pickler = ForkingPickler(buf)
    for cls in (torch.Tensor, torch.nn.Parameter):  # the pickler's own table: nothing global changes
        pickler.dispatch_table[cls] = _reduce_with_uuid(pickler.dispatch_table[cls])
    pickler.dump(list(bucket))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def default_serializer() -> Serializer:
    return forking_pickle_b64


async def _gather(*coros):
    return await asyncio.gather(*coros)


def tensor_device(device: Optional[torch.device]) -> torch.device:
    """Where a rank's tensors for the servers live: `device`, else this rank's GPU, else CPU."""
    if device is not None:
        return device
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _placed(bucket: Bucket, device: Optional[torch.device]) -> Bucket:
    if device is None:
        return bucket
    bucket = [(n, t.to(device, non_blocking=True)) for n, t in bucket]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return bucket


def _serialized(bucket: Bucket, copies: int, serialize: Serializer, rank: int) -> Tuple[str, object]:
    """("ok", [payload per TP rank this rank feeds]) or ("error", why): a failure travels to rank 0."""
    try:
        return "ok", [serialize(bucket) for _ in range(copies)]
    except Exception as e:  # noqa: BLE001 - reported to rank 0, which stops every rank
        return "error", f"rank {rank}: {type(e).__name__}: {e}"


def copies_per_rank(plan: Dict[str, List[int]]) -> Dict[int, int]:
    """How many payloads each trainer rank serializes per bucket: one per TP rank it feeds."""
    out: Dict[int, int] = {}
    for ranks in plan.values():
        for r in ranks:
            out[r] = out.get(r, 0) + 1
    return out


def assemble(plan: Dict[str, List[int]], payloads: List[List[str]]) -> Dict[str, List[str]]:
    """{url: [payload for TP rank 0, 1, ...]} from every rank's payloads (payloads[rank], in
    the order copies_per_rank counted them: servers in plan order, TP ranks in order)."""
    taken = [0] * len(payloads)
    out: Dict[str, List[str]] = {}
    for url, ranks in plan.items():
        out[url] = []
        for r in ranks:
            out[url].append(payloads[r][taken[r]])
            taken[r] += 1
    return out


class TensorSync:
    """Callable transport for SGLangEngine(weight_sync=TensorSync(...)); rank 0's side."""

    def __init__(
        self,
        bucket_mb: float = 512,
        serializer: Optional[Serializer] = None,
        device: Optional[torch.device] = None,
        server_visible_devices: Optional[str] = None,
    ):
        self.max_bytes = int(bucket_mb * 2**20)
        self.serializer = serializer
        self.device = device  # where tensors must live for the servers (default: this rank's GPU)
        # The servers' CUDA_VISIBLE_DEVICES; None: the trainer's (servers chord starts inherit it).
        self.server_visible_devices = server_visible_devices

    def __call__(self, engine, named: Iterable[Tuple[str, torch.Tensor]], version: str) -> SyncStats:
        client = engine.client
        serialize = self.serializer or default_serializer()
        seats = gather_to_rank0(this_seat(0, tensor_device(self.device)))
        stats = SyncStats("tensor")
        with contextlib.ExitStack() as session:
            try:
                infos = engine.run(client.server_infos())
                check_servers_take(infos, "tensor")
                visible = self.server_visible_devices
                plan = feeders(
                    infos,
                    seats,
                    visible_devices(visible if visible is not None else os.environ.get("CUDA_VISIBLE_DEVICES")),
                )
                session.enter_context(update_session(engine))
            except BaseException as e:
                rank0_object(("stop", str(e)))  # the other ranks stop too, before touching a tensor
                raise
            copies = copies_per_rank(plan)
            rank0_object(("go", copies))
            # Buckets are gathered in this (the caller's) thread: the tensors may come from a
            # collective iterator that must run where the trainer runs it.
            for bucket, last in with_last(bucketize(named, self.max_bytes)):
                bucket = _placed(bucket, self.device)
                try:
                    mine = [serialize(bucket) for _ in range(copies.get(0, 0))]
                except BaseException as e:
                    gather_to_rank0(("error", f"rank 0: {type(e).__name__}: {e}"))
                    rank0_object(f"rank 0: {type(e).__name__}: {e}")
                    raise
                answers = gather_to_rank0(("ok", mine))
                try:
                    failed = [why for kind, why in answers if kind == "error"]
                    if failed:
                        raise WeightSyncError(f"tensor sync: {failed[0]}")
                    payload = assemble(plan, [why for _, why in answers])
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
                except BaseException as e:
                    rank0_object(str(e) or type(e).__name__)
                    raise
                rank0_object(None)  # the servers have copied: every rank may release the bucket
                stats.add(bucket)
                del bucket, mine, answers, payload
        return stats.finish()


def feed_tensor_sync(
    named: Iterable[Tuple[str, torch.Tensor]],
    *,
    bucket_mb: float = 512,
    serializer: Optional[Serializer] = None,
    device: Optional[torch.device] = None,
) -> None:
    """A rank other than 0 in a tensor sync: the same HF tensors as rank 0, in the same buckets;
    serializes a payload for each SGLang TP rank on its GPU, and keeps each bucket until rank 0
    says the servers have it. Raises WeightSyncError when rank 0 stops the sync."""
    import torch.distributed as dist

    rank = dist.get_rank()
    serialize = serializer or default_serializer()
    gather_to_rank0(this_seat(rank, tensor_device(device)))
    kind, detail = rank0_object(None)
    if kind == "stop":
        raise WeightSyncError(f"rank 0 stopped the tensor sync: {detail}")
    copies = detail.get(rank, 0)
    for bucket in bucketize(named, int(bucket_mb * 2**20)):
        bucket = _placed(bucket, device)
        gather_to_rank0(_serialized(bucket, copies, serialize, rank))
        stopped = rank0_object(None)
        if stopped is not None:
            raise WeightSyncError(f"rank 0 stopped the tensor sync: {stopped}")
        del bucket
