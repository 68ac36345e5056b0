"""Colocated tensor sync over 2 trainer ranks (gloo) into a fake SGLang server with 2 TP ranks:
each TP rank's payload is serialized by the trainer rank on its GPU, and a layout with a TP rank
on a GPU no trainer rank uses is refused on every rank before a session opens.

The CPU has no GPUs, so each rank claims one (this_seat is replaced: rank r on GPU r); the
payloads are tagged with the rank that made them instead of holding handles."""

import pytest

from tests.support import fake_sglang
from tests.support.dist_harness import run_job

pytestmark = pytest.mark.dist

BUCKET_MB = 20_000 / 2**20  # the 7 tensors below make 5 buckets


def named_tensors():
    import torch

    g = torch.Generator().manual_seed(0)
    sizes = [(64, 32), (32,), (200, 64), (64, 64), (8,), (64, 176), (176, 64)]
    return [(f"model.t{i}.weight", torch.randn(*s, generator=g)) for i, s in enumerate(sizes)]


def sync_job(url):
    import torch.distributed as dist

    from chord_megatron.rollout.sglang.client import SGLangClient
    from chord_megatron.rollout.sglang.engine import SGLangEngine
    from chord_megatron.train.parallel import init_distributed
    from chord_megatron.weight_sync import tensor
    from chord_megatron.weight_sync.gpu_seats import Seat

    init_distributed("gloo")
    rank = dist.get_rank()
    tensor.this_seat = lambda r, device: Seat(rank, "node0", f"uuid-{rank}", rank)

    def tagged(bucket):
        return f"rank{rank}:" + ",".join(n for n, _ in bucket)

    try:
        if rank == 0:
            with SGLangEngine(SGLangClient([url], [url], backoff_s=0.05)) as eng:
                # the servers see GPUs 0-3 (the trainer's CUDA_VISIBLE_DEVICES is "" under pytest)
                eng.weight_sync = tensor.TensorSync(
                    bucket_mb=BUCKET_MB, serializer=tagged, server_visible_devices="0,1,2,3"
                )
                eng.update_weights(iter(named_tensors()), "3")
                return {"buckets": eng.last_sync.buckets}
        tensor.feed_tensor_sync(iter(named_tensors()), bucket_mb=BUCKET_MB, serializer=tagged)
        return {}
    except Exception as e:  # noqa: BLE001 - the refusal is the result under test
        return {"error": f"{type(e).__name__}: {e}"}


def test_each_tp_rank_gets_the_payload_of_the_trainer_rank_on_its_gpu(tmp_path):
    with fake_sglang.running(1, tmp_path, {0: ["--tp-size", "2"]}) as (w,):
        r0, r1 = run_job(sync_job, world=2, args=(w.url,), timeout=120)
        s = fake_sglang.stats(w)
    assert r0 == {"buckets": 5} and r1 == {}
    updates = [b for p, b in s["requests"] if p == "/update_weights_from_tensor"]
    assert len(updates) == 5
    for body in updates:
        tp0, tp1 = body["serialized_named_tensors"]
        assert tp0.startswith("rank0:") and tp1.startswith("rank1:")
        assert tp0.split(":")[1] == tp1.split(":")[1]  # the same bucket on both ranks
    assert ",".join(b["serialized_named_tensors"][1].split(":")[1] for b in updates) == ",".join(
        f"model.t{i}.weight" for i in range(7)
    )
    assert [u["weight_version"] for u in s["weight_updates"]] == [None] * 4 + ["3"]
    assert not s["session_open"]


def test_a_tp_rank_on_a_gpu_without_a_trainer_rank_is_refused_on_every_rank(tmp_path):
    # TP ranks on GPUs 1 and 2; the trainer ranks sit on GPUs 0 and 1.
    with fake_sglang.running(1, tmp_path, {0: ["--tp-size", "2", "--base-gpu-id", "1"]}) as (w,):
        r0, r1 = run_job(sync_job, world=2, args=(w.url,), timeout=120)
        s = fake_sglang.stats(w)
    reason = f"{w.url}: TP rank 1 runs on GPU 2, where no trainer rank runs (rank 0: 0, rank 1: 1)"
    assert r0["error"].startswith(f"WeightSyncError: {reason}: the tensor transport feeds each SGLang TP rank")
    assert r1["error"].startswith(f"WeightSyncError: rank 0 stopped the tensor sync: {reason}")
    assert not [p for p, _ in s["requests"] if "weight" in p]  # no session, no update
