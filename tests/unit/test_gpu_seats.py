"""Colocated tensor sync: which trainer rank feeds each SGLang TP rank (weight_sync/gpu_seats.py),
under the same and under different CUDA_VISIBLE_DEVICES; the layouts it refuses; and the CUDA
handles' device sent as a UUID (weight_sync/tensor.py)."""

import base64
import io
import pickle
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
from torch.multiprocessing import reductions

from chord_megatron.weight_sync import tensor
from chord_megatron.weight_sync.buckets import WeightSyncError
from chord_megatron.weight_sync.gpu_seats import Seat, feeders, physical_number, server_gpus, visible_devices
from chord_megatron.weight_sync.tensor import assemble, copies_per_rank, device_arg_as_uuid
from tests.support import sglang_contract

UUIDS = [f"{i:08x}-1111-2222-3333-44445555666{i}" for i in range(8)]  # torch's spelling: no GPU- prefix


def trainer(visible, host="node0", ranks=None):
    """The seats of trainer ranks 0..n-1 on one node, rank r on its CUDA device r, as this_seat
    computes them for a process with CUDA_VISIBLE_DEVICES=visible."""
    entries = visible_devices(visible)
    n = ranks if ranks is not None else len(entries)
    seats = []
    for r in range(n):
        physical = physical_number(r, entries)
        entry = entries[r] if entries is not None else str(r)
        uuid = UUIDS[int(entry)] if entry.isdigit() else entry.removeprefix("GPU-")
        seats.append(Seat(r, host, uuid, physical))
    return seats


def servers(*specs):
    """{url: /server_info} for (tp_size, base_gpu_id) pairs."""
    return {
        f"http://s{i}": {"tp_size": tp, "base_gpu_id": base, "gpu_id_step": 1} for i, (tp, base) in enumerate(specs)
    }


def test_each_tp_rank_is_fed_by_the_trainer_rank_on_its_gpu():
    seats = trainer("0,1,2,3,4,5,6,7")
    plan = feeders(servers((2, 0), (2, 2), (2, 4), (2, 6)), seats, visible_devices("0,1,2,3,4,5,6,7"))
    assert plan == {"http://s0": [0, 1], "http://s1": [2, 3], "http://s2": [4, 5], "http://s3": [6, 7]}
    # one TP-8 server on all of them; unset CUDA_VISIBLE_DEVICES on both sides means the same GPUs
    assert feeders(servers((8, 0)), trainer(None, ranks=8), None) == {"http://s0": list(range(8))}


def test_gpus_are_matched_across_different_cuda_visible_devices():
    # The trainer sees physical GPUs 4..7 as its devices 0..3; the servers see all eight.
    seats = trainer("4,5,6,7")
    assert [(s.rank, s.physical) for s in seats] == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert feeders(servers((2, 4), (2, 6)), seats, None) == {"http://s0": [0, 1], "http://s1": [2, 3]}
    # ... or the servers' step sees only 6 and 7: its device 0 is the trainer's device 2
    assert feeders(servers((2, 0)), seats, visible_devices("6,7")) == {"http://s0": [2, 3]}
    # GPUs named by UUID on either side (CUDA takes a unique prefix, with or without GPU-)
    by_uuid = trainer(",".join("GPU-" + u for u in UUIDS[4:]))
    assert [s.physical for s in by_uuid] == [None] * 4
    assert feeders(servers((2, 0)), by_uuid, visible_devices(f"GPU-{UUIDS[7][:13]},{UUIDS[6]}")) == {
        "http://s0": [3, 2]
    }
    assert feeders(servers((1, 0)), seats, visible_devices("GPU-" + UUIDS[5].upper())) == {"http://s0": [1]}


def test_only_rank_0s_node_feeds():
    seats = trainer("0,1") + [Seat(r + 2, "node1", UUIDS[r], r) for r in range(2)]  # node1's GPUs 0,1
    assert feeders(servers((2, 0)), seats, None) == {"http://s0": [0, 1]}


def test_a_cpu_trainer_feeds_every_tp_rank_from_rank_0():
    seats = [Seat(0, "n"), Seat(1, "n")]
    assert feeders(servers((2, 0), (4, 2)), seats, None) == {"http://s0": [0, 0], "http://s1": [0, 0, 0, 0]}


def test_layouts_without_a_trainer_rank_on_a_server_gpu_are_refused():
    seats = trainer("0,1,2,3")
    with pytest.raises(WeightSyncError, match=r"^http://s1: TP rank 1 runs on GPU 4, where no trainer rank runs \("):
        feeders(servers((2, 0), (2, 3)), seats, None)
    with pytest.raises(WeightSyncError, match=r"use rollout.weight_sync=disk"):
        feeders(servers((2, 0)), seats, visible_devices("6,7"))
    with pytest.raises(
        WeightSyncError, match=r"^http://s0: its TP ranks run on CUDA devices \[1, 2\], but .*'0,1'.* 2 GPUs"
    ):
        feeders(servers((2, 1)), seats, visible_devices("0,1"))
    by_uuid = trainer(",".join("GPU-" + u for u in UUIDS[:2]))
    with pytest.raises(WeightSyncError, match=r"GPU 0, a GPU number, while the trainer's CUDA_VISIBLE_DEVICES names"):
        feeders(servers((1, 0)), by_uuid, None)


def test_server_gpus_follow_base_gpu_id_and_step():
    info = {"tp_size": 2, "base_gpu_id": 1, "gpu_id_step": 2}
    assert server_gpus(info, None) == ["1", "3"]
    assert server_gpus(info, ["a", "b", "c", "d"]) == ["b", "d"]


def test_payloads_are_assembled_from_the_feeding_ranks():
    plan = {"http://s0": [0, 1], "http://s1": [1, 1]}
    assert copies_per_rank(plan) == {0: 1, 1: 3}
    payloads = [["r0-a"], ["r1-a", "r1-b", "r1-c"]]
    assert assemble(plan, payloads) == {"http://s0": ["r0-a", "r1-a"], "http://s1": ["r1-b", "r1-c"]}


def cuda_reduction(device=3):
    """What torch's reduce_tensor returns for a CUDA tensor (no GPU needed to build it)."""
    return reductions.rebuild_cuda_tensor, (
        torch.Tensor,
        (4,),
        (1,),
        0,
        torch.UntypedStorage,
        torch.bfloat16,
        device,
        b"handle",
        8,
        0,
        False,
        b"ref",
        0,
        b"event",
        True,
    )


def test_cuda_handles_name_the_device_by_uuid():
    rebuild, args = cuda_reduction()
    out = device_arg_as_uuid(rebuild, args, uuid_of=lambda i: UUIDS[i])
    assert out[6] == UUIDS[3] and out[:6] == args[:6] and out[7:] == args[7:]
    assert device_arg_as_uuid(rebuild, out, uuid_of=lambda i: "again") == out  # already a UUID
    cpu_rebuild, cpu_args = reductions.rebuild_tensor, (torch.Tensor, None, (0, (4,), (1,), False))
    assert device_arg_as_uuid(cpu_rebuild, cpu_args, uuid_of=lambda i: "x") == cpu_args


@pytest.mark.skipif(not sglang_contract.available(), reason="needs `pip install --no-deps sglang==0.5.23`")
def test_the_uuid_payload_stays_within_sglangs_allowlist(monkeypatch):
    """The pickler forking_pickle_b64 builds, fed a CUDA reduction: the payload names only
    rebuild_cuda_tensor (allowed by SGLang's SafeUnpickler, patched there to take a UUID) and
    carries the UUID where the device index was."""
    monkeypatch.setattr(tensor, "cuda_uuid", lambda i: UUIDS[i])

    class OnGpu3(torch.Tensor):  # stands for a CUDA tensor: its reduction is the one above
        pass

    monkeypatch.setitem(
        ForkingPickler._extra_reducers,
        OnGpu3,
        lambda t: cuda_reduction(),  # torch's own reduction: the device is an index
    )
    monkeypatch.setattr(torch.nn, "Parameter", OnGpu3)  # forking_pickle_b64 wraps this type's reducer
    payload = tensor.forking_pickle_b64([("w", torch.zeros(4).as_subclass(OnGpu3))])
    allowed, calls = sglang_contract.sglang_allowed_pickle_globals(), []

    class Receiver(pickle.Unpickler):
        def find_class(self, module, name):
            assert (module, name) in allowed, (module, name)
            if (module, name) == ("torch.multiprocessing.reductions", "rebuild_cuda_tensor"):
                return lambda *args: calls.append(args) or "rebuilt"
            return super().find_class(module, name)

    assert Receiver(io.BytesIO(base64.b64decode(payload))).load() == [("w", "rebuilt")]
    assert calls[0][6] == UUIDS[3]
