"""Buckets and the three transports, against fake SGLang workers on loopback.

tensor: payloads per TP rank, unpicklable by SGLang's SafeUnpickler allowlist, version only on
the last bucket; disk: an HF folder that reads back identically; nccl: a real gloo broadcast
group, joined on the worker side with SGLang's own init_custom_process_group from the wheel."""

import base64
import io
import json
import pickle
import time
import urllib.request

import pytest
import torch

from chord_megatron.net import free_port
from chord_megatron.rollout.sglang.client import SGLangClient, SGLangError
from chord_megatron.rollout.sglang.engine import SGLangEngine
from chord_megatron.weight_sync.buckets import SyncStats, bucketize, tensor_bytes, with_last
from chord_megatron.weight_sync.disk import DiskSync, read_hf_checkpoint
from chord_megatron.weight_sync.nccl import NcclSync
from chord_megatron.weight_sync.tensor import TensorSync, forking_pickle_b64
from tests.support import fake_sglang, sglang_contract

needs_wheel = pytest.mark.skipif(
    not sglang_contract.available(), reason="needs `pip install --no-deps sglang==0.5.23` and msgspec"
)


def named_tensors(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [(64, 32), (32,), (200, 64), (64, 64), (8,), (64, 176), (176, 64)][:n]
    dtypes = [torch.float32, torch.bfloat16]
    return [(f"model.t{i}.weight", torch.randn(*s, generator=g).to(dtypes[i % 2])) for i, s in enumerate(sizes)]


# ----------------------------------------------------------------------------------------------
# buckets
# ----------------------------------------------------------------------------------------------
def test_bucketize_bounds_keeps_order_and_isolates_big_tensors():
    named = named_tensors()
    cap = 20_000
    buckets = list(bucketize(iter(named), cap))
    assert [n for b in buckets for n, _ in b] == [n for n, _ in named]
    for b in buckets:
        size = sum(tensor_bytes(t) for _, t in b)
        assert size <= cap or len(b) == 1
    # bytes: 8192 + 64 | 51200 (over the cap, alone) | 8192 + 32 | 22528 (alone) | 45056 (alone)
    assert [len(b) for b in buckets] == [2, 1, 2, 1, 1]
    with pytest.raises(ValueError):
        list(bucketize(named, 0))


def test_with_last_marks_only_the_final_item():
    assert list(with_last(iter("abc"))) == [("a", False), ("b", False), ("c", True)]
    assert list(with_last([])) == []


def test_sync_stats():
    s = SyncStats("x")
    s.add(named_tensors(2))
    s.finish()
    assert (s.tensors, s.buckets, s.bytes) == (2, 1, 64 * 32 * 4 + 32 * 2)
    m = s.as_metrics()
    assert m["sync/bytes"] == s.bytes and m["sync/gb_per_s"] > 0 and m["sync/seconds"] == s.seconds


# ----------------------------------------------------------------------------------------------
# transports, against fake workers
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def fakes(tmp_path):
    started = []

    def launch(n=1, *extra):
        ws = fake_sglang.launch_fake_workers(n, tmp_path, {i: ["--max-lifetime-s", "60", *extra] for i in range(n)})
        started.extend(ws)
        return ws

    yield launch
    for w in started:
        w.stop()


def stats(worker):
    with urllib.request.urlopen(worker.url + "/_fake/stats", timeout=5) as r:
        return json.loads(r.read())


def engine_for(workers, sync):
    urls = [w.url for w in workers]
    return SGLangEngine(SGLangClient(urls, urls, backoff_s=0.05), weight_sync=sync)


def unpickle(payload: str):
    return pickle.loads(base64.b64decode(payload))


@needs_wheel
def test_tensor_payload_round_trips_within_sglang_allowlist():
    allowed = sglang_contract.sglang_allowed_pickle_globals()
    bucket = named_tensors(3)
    payload = forking_pickle_b64(bucket)
    used = set()

    class AllowlistUnpickler(pickle.Unpickler):  # what SGLang's SafeUnpickler.find_class checks
        def find_class(self, module, name):
            used.add((module, name))
            if (module, name) not in allowed:
                raise pickle.UnpicklingError(f"SGLang would block {module}.{name}")
            return super().find_class(module, name)

    back = AllowlistUnpickler(io.BytesIO(base64.b64decode(payload))).load()
    assert ("torch.multiprocessing.reductions", "rebuild_storage_fd") in used  # shared memory, not a copy
    assert [n for n, _ in back] == [n for n, _ in bucket]
    assert all(torch.equal(a, b) and a.dtype == b.dtype for (_, a), (_, b) in zip(back, bucket))


def test_tensor_sync_buckets_per_rank_payloads_and_version_on_last(fakes):
    ws = fakes(2, "--tp-size", "2")
    seen = []

    def serializer(bucket):
        seen.append([n for n, _ in bucket])
        return forking_pickle_b64(bucket)

    sync = TensorSync(bucket_mb=20_000 / 2**20, serializer=serializer)
    named = named_tensors()
    with engine_for(ws, sync) as eng:
        eng.update_weights(iter(named), version=7)
        st = eng.last_sync
        assert eng.served_versions() == {ws[0].url: "7", ws[1].url: "7"}
    assert (st.transport, st.tensors, st.buckets) == ("tensor", 7, 5)
    assert st.bytes == sum(tensor_bytes(t) for _, t in named) and st.bytes_per_s > 0
    for w in ws:
        s = stats(w)
        ups = s["weight_updates"]
        assert [u["payloads"] for u in ups] == [2] * 5  # one payload per TP rank
        assert [u["weight_version"] for u in ups] == [None] * 4 + ["7"]
        assert [u["flush_cache"] for u in ups] == [False] * 4 + [True]
        paths = [p for p, _ in s["requests"]]
        assert paths[0] == "/begin_weight_update" and paths[-1] == "/end_weight_update"
        assert not s["session_open"]
        first = next(b for p, b in s["requests"] if p == "/update_weights_from_tensor")
        back = unpickle(first["serialized_named_tensors"][1])
        assert [n for n, _ in back] == seen[0] and torch.equal(back[0][1], named[0][1])


def test_tensor_sync_failure_still_closes_the_session(fakes):
    (w,) = fakes(1)

    def broken(bucket):
        raise RuntimeError("serialization failed")

    with engine_for([w], TensorSync(serializer=broken)) as eng:
        with pytest.raises(RuntimeError, match="serialization failed"):
            eng.update_weights(named_tensors(2), "3")
        assert eng.weight_version is None
    s = stats(w)
    assert not s["session_open"] and s["weight_version"] == "default"


def test_disk_sync_writes_a_readable_hf_folder(fakes, tmp_path):
    (w,) = fakes(1)
    named = named_tensors()
    sync = DiskSync(tmp_path / "weights", bucket_mb=60_000 / 2**20, config={"model_type": "qwen2"}, keep_last=1)
    with engine_for([w], sync) as eng:
        eng.update_weights(named, "4")
        eng.update_weights(named_tensors(seed=1), "5")
        assert eng.served_versions() == {w.url: "5"}
        st = eng.last_sync
    folder = tmp_path / "weights" / "v5"
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["v5"]  # v4 pruned
    back = read_hf_checkpoint(folder)
    assert set(back) == {n for n, _ in named}
    for n, t in named_tensors(seed=1):
        assert torch.equal(back[n], t) and back[n].dtype == t.dtype
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == st.bytes and len(set(index["weight_map"].values())) == st.buckets > 1
    assert json.loads((folder / "config.json").read_text()) == {"model_type": "qwen2"}
    disk_calls = [b for p, b in stats(w)["requests"] if p == "/update_weights_from_disk"]
    assert disk_calls[-1] == {"model_path": str(folder), "weight_version": "5"}
    assert "/begin_weight_update" not in [p for p, _ in stats(w)["requests"]]


@pytest.mark.slow
@needs_wheel  # the fake joins with SGLang's own init_custom_process_group, read from the wheel
def test_nccl_sync_broadcasts_over_a_real_group(fakes):
    ws = fakes(2, "--join-groups")
    named = named_tensors()
    sync = NcclSync("127.0.0.1", free_port(), backend="gloo", bucket_mb=20_000 / 2**20, init_timeout_s=60)
    with engine_for(ws, sync) as eng:
        eng.update_weights(named, "9")
        assert eng.served_versions() == {ws[0].url: "9", ws[1].url: "9"}
        eng.update_weights(named_tensors(seed=3), "10")  # the group is reused
        st = eng.last_sync
        sync.close(eng)
    assert (st.transport, st.tensors, st.buckets) == ("nccl", 7, 5)
    expected = {
        n: [str(t.dtype).replace("torch.", ""), list(t.shape), float(t.double().sum())]
        for n, t in named_tensors(seed=3)
    }
    for rank, w in enumerate(ws, start=1):
        s = stats(w)
        init = next(b for p, b in s["requests"] if p == "/init_weights_update_group")
        assert (init["rank_offset"], init["world_size"], init["backend"]) == (rank, 3, "gloo")
        got = {n: v[:2] + [pytest.approx(v[2], rel=1e-6)] for n, v in s["received"].items()}
        assert got == expected
        assert [u["weight_version"] for u in s["weight_updates"]][-5:] == [None] * 4 + ["10"]


@pytest.mark.slow
@needs_wheel
def test_nccl_sync_late_refusal_ends_the_broadcast_instead_of_hanging(fakes):
    """The server joins the group but refuses the announcement after 1 s and never receives: the
    32 MB broadcast cannot complete, and the sync must fail with the refusal well before the
    group's 60 s timeout, abort the group and close the session."""
    (w,) = fakes(1, "--join-groups", "--refuse-distributed-after-s", "1.0")
    sync = NcclSync("127.0.0.1", free_port(), backend="gloo", init_timeout_s=60)
    big = [("model.embed_tokens.weight", torch.ones(8 * 2**20))]
    with engine_for([w], sync) as eng:
        start = time.monotonic()
        with pytest.raises(SGLangError, match="fault injection"):
            eng.update_weights(big, "1")
        assert time.monotonic() - start < 20
        assert sync.group is None  # dropped: the next sync sets up a new group
        assert eng.weight_version is None
    s = stats(w)
    assert not s["session_open"]
    assert "/destroy_weights_update_group" in [p for p, _ in s["requests"]]


def test_transport_from_config(tmp_path, monkeypatch):
    from chord_megatron.config import load_config
    from chord_megatron.weight_sync.factory import transport_from_config

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    base = [f"train.output_dir={tmp_path}", "rollout.sync_bucket_mb=3"]
    t = transport_from_config(load_config(None, base + ["rollout.weight_sync=tensor"]))
    assert isinstance(t, TensorSync) and t.max_bytes == 3 * 2**20
    n = transport_from_config(load_config(None, base + ["rollout.weight_sync=nccl"]))
    assert isinstance(n, NcclSync) and n.master_address == "127.0.0.1" and n.backend == "gloo" and n.master_port > 0
    d = transport_from_config(load_config(None, base + ["rollout.weight_sync=disk", "model.qkv_bias=true"]))
    assert isinstance(d, DiskSync) and d.directory == tmp_path / "hf_weights"
    assert d.config["model_type"] == "qwen2" and d.config["num_key_value_heads"] == 2
