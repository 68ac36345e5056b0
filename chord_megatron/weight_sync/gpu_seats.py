"""Which trainer rank feeds each SGLang tensor-parallel rank in a colocated tensor sync.

A CUDA-IPC handle opened on another GPU costs the receiver a CUDA context there, so each SGLang
TP rank must get its tensors from the trainer rank on its own GPU; a server fed by rank 0 alone
would put one context per receiver on GPU 0, the GPU with the least headroom.

GPUs are matched by identity, not by number: a number in CUDA_VISIBLE_DEVICES is a physical
GPU (in the driver's order), and the CUDA device index a process sees is a position in its own
CUDA_VISIBLE_DEVICES, which may differ between the trainer and the servers. A server's TP rank j
runs on device base_gpu_id + j * gpu_id_step of the server's list (its /server_info reports
both), and that entry is a physical number or a UUID; a trainer rank knows its own GPU's UUID
(torch) and physical number (its own list). The handles then carry the device as a UUID, which
SGLang's receiving side resolves among its own devices (sglang.srt.utils.patch_torch).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import torch

from .buckets import WeightSyncError


@dataclass(frozen=True)
class Seat:
    """Where a trainer rank's tensors live: its host, and its GPU as a UUID (torch's spelling,
    no 'GPU-' prefix) and a physical number (None when its CUDA_VISIBLE_DEVICES names the GPU by
    UUID). A CPU trainer has neither."""

    rank: int
    host: str
    uuid: Optional[str] = None
    physical: Optional[int] = None


def visible_devices(value: Optional[str]) -> Optional[List[str]]:
    """CUDA_VISIBLE_DEVICES as a list of entries (numbers or UUIDs); None when unset (every GPU,
    in the driver's order)."""
    if value is None:
        return None
    return [e.strip() for e in value.split(",") if e.strip()]


def plain_uuid(entry: str) -> str:
    """A UUID as torch spells it: 'GPU-8932f937-...' -> '8932f937-...'."""
    entry = entry.strip().lower()
    return entry[4:] if entry.startswith("gpu-") else entry


def this_seat(rank: int, device: torch.device) -> Seat:
    """This process's seat for tensors on `device`."""
    host = socket.gethostname()
    if device.type != "cuda":
        return Seat(rank, host)
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = plain_uuid(str(torch.cuda.get_device_properties(index).uuid))
    return Seat(rank, host, uuid, physical_number(index, visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))))


def physical_number(index: int, visible: Optional[List[str]]) -> Optional[int]:
    """The physical GPU number behind CUDA device `index` of a process with these visible
    devices; None when the entry is a UUID."""
    entry = str(index) if visible is None else visible[index]
    return int(entry) if entry.isdigit() else None


def server_gpus(info: Mapping, visible: Optional[List[str]]) -> List[str]:
    """The entry (a physical number or a UUID) of the GPU each TP rank of a server runs on, from
    its /server_info and its CUDA_VISIBLE_DEVICES."""
    tp = int(info.get("tp_size", 1) or 1)
    base = int(info.get("base_gpu_id", 0) or 0)
    step = int(info.get("gpu_id_step", 1) or 1)
    devices = [base + j * step for j in range(tp)]
    if visible is None:
        return [str(d) for d in devices]
    if devices[-1] >= len(visible):
        raise WeightSyncError(
            f"its TP ranks run on CUDA devices {devices}, but the servers' CUDA_VISIBLE_DEVICES "
            f"({','.join(visible)!r}: rollout.server_visible_devices, else the trainer's) lists {len(visible)} GPUs"
        )
    return [visible[d] for d in devices]


def seat_of(entry: str, seats: Sequence[Seat]) -> Optional[Seat]:
    """The (lowest) trainer rank on the GPU a server names `entry`, among `seats`."""
    if entry.isdigit():
        found = [s for s in seats if s.physical == int(entry)]
    else:
        found = [s for s in seats if s.uuid is not None and s.uuid.startswith(plain_uuid(entry))]
    return min(found, key=lambda s: s.rank) if found else None


def feeders(
    infos: Mapping[str, Mapping], seats: Sequence[Seat], server_visible: Optional[List[str]]
) -> Dict[str, List[int]]:
    """{server url: [trainer rank that feeds TP rank 0, 1, ...]}. Only ranks on rank 0's host
    count: a server reached by CUDA IPC shares a node with the trainer. A CPU trainer's tensors
    travel through shared memory, not GPU handles: rank 0 feeds every TP rank. Raises
    WeightSyncError (naming the server, the TP rank and its GPU) when a TP rank's GPU has no
    trainer rank on it."""
    rank0 = min(seats, key=lambda s: s.rank)
    if rank0.uuid is None:
        return {url: [rank0.rank] * int(info.get("tp_size", 1) or 1) for url, info in infos.items()}
    local = [s for s in seats if s.host == rank0.host]
    out: Dict[str, List[int]] = {}
    for url, info in infos.items():
        try:
            gpus = server_gpus(info, server_visible)
        except WeightSyncError as e:
            raise WeightSyncError(f"{url}: {e}") from None
        ranks = []
        for j, entry in enumerate(gpus):
            seat = seat_of(entry, local)
            if seat is None:
                raise WeightSyncError(f"{url}: TP rank {j} runs on GPU {entry}, {no_seat_reason(entry, local)}")
            ranks.append(seat.rank)
        out[url] = ranks
    return out


def no_seat_reason(entry: str, local: Sequence[Seat]) -> str:
    """Why no trainer rank matches a server GPU, and what to do."""
    ours = ", ".join(f"rank {s.rank}: {s.physical if s.physical is not None else 'GPU-' + str(s.uuid)}" for s in local)
    if entry.isdigit() and all(s.physical is None for s in local):
        return (
            f"a GPU number, while the trainer's CUDA_VISIBLE_DEVICES names its GPUs by UUID ({ours}): name the servers' "
            "GPUs by UUID in rollout.server_visible_devices"
        )
    return (
        f"where no trainer rank runs ({ours}): the tensor transport feeds each SGLang TP rank from the trainer "
        "rank on its GPU, so the servers must share the trainer's GPUs (if their CUDA_VISIBLE_DEVICES differs "
        "from the trainer's, set rollout.server_visible_devices), or use rollout.weight_sync=disk"
    )
