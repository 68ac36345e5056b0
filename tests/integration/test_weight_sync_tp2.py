"""The NCCL transport end to end, from a TP=2 Megatron trainer to a receiver that serves an HF model.

Trainer: a 2-process gloo job (tests/support/dist_harness.py), MegatronEngine with parallel.tensor=2
(tiny, fp32, CPU). The sync is the training loop's own, chord_megatron.weight_sync.verified.WeightSync.push:
every rank walks export_weights() (collective: TP shards gathered), rank 0 alone converts the
stream (weight_sync.convert.megatron_to_hf) and hands it to its SGLangEngine, whose transport is
the project's NcclSync over a gloo group -- the path rollout.weight_sync=nccl takes -- with a small
bucket, so a sync is several /update_weights_from_distributed calls inside one
begin/end_weight_update session (and /pause_generation .. /continue_generation around it).

Receiver (tests/support/hf_weight_receiver.py): a separate process playing the SGLang
server: it joins the weights-update group at rank_offset 1 (world size 2) when the trainer's
rank 0 calls /init_weights_update_group, receives the broadcasts in the order of `names` and
loads each bucket into a transformers model (rollout.inprocess.build_hf_model) that started from
other random weights. One receiver process serves both variants in turn: before each, rank 0
resets it to a fresh server of that variant's model, and after each NcclSync.close destroys the
group on both sides, so the next variant forms a new one under the same group name.

Checked, for tied embeddings (Qwen2-style, QKV bias) and untied (Llama-style):
  * before the first sync the receiver's log-probs differ from the trainer's (so a match after it
    means something);
  * after sync "1": every tensor arrived bit-identical (dtype, shape, float64 sum, first values),
    every parameter of the HF model was loaded (and no lm_head with tied embeddings), the group was
    joined at rank_offset 1 of world size 2 over gloo, the session was opened and closed, only
    the last bucket carried the version, the server reports version "1", and the receiver's
    log-probs of a fixed token batch (at T = 0.8, every position of every row) equal the TP=2
    Megatron model's within 1e-5;
  * after one optimizer step the old receiver weights no longer match (> 1e-3), and after sync
    "2" over the same group they match again within 1e-5, served as version "2".
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from chord_megatron.net import free_port
from tests.support.fake_sglang import child_env

pytestmark = [pytest.mark.slow, pytest.mark.dist]

BASE = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.ffn_hidden_size=176",
    "model.num_attention_heads=4",
    "model.num_query_groups=2",
    "model.vocab_size=64",
]
# verify_every=0: WeightSync.verify samples a probe from /generate, which the receiver only fakes;
# this test compares the served model's log-probs itself.
TRAIN = [
    "parallel.tensor=2",
    "parallel.backend=gloo",
    "rollout.temperature=0.8",
    "train.micro_batch_size=8",
    "optim.lr=0.01",
    "train.seed=3",
    "rollout.weight_sync=nccl",
    "rollout.verify_every=0",
]
VARIANTS = {
    "tied_qwen2": ["model.tie_embeddings=true", "model.qkv_bias=true"],
    "untied_llama": ["model.tie_embeddings=false", "model.qkv_bias=false"],
}
TEMPERATURE = 0.8
BUCKET_BYTES = 64 * 1024  # ~0.4 MB of weights -> about ten buckets per sync
TOL = 1e-5


def _post(url: str, path: str, body: dict, timeout_s: float = 30.0) -> dict:
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310 - loopback test server
        return json.loads(r.read())


def _get(url: str, path: str, timeout_s: float = 10.0) -> dict:
    with urllib.request.urlopen(url + path, timeout=timeout_s) as r:  # noqa: S310 - loopback test server
        return json.loads(r.read())


def _token_batch():
    """6 expert rows of random tokens (prompts 3-6, responses 5-9 tokens), right-padded."""
    import torch

    from chord_megatron.data import ExpertRow
    from chord_megatron.data.batch import build_train_batch

    g = torch.Generator().manual_seed(5)
    rows = []
    for i in range(6):
        p, r = 3 + i % 4, 5 + (i * 3) % 5
        toks = torch.randint(1, 64, (p + r,), generator=g).tolist()
        rows.append(ExpertRow(prompt_ids=toks[:p], response_ids=toks[p:]))
    return build_train_batch([], torch.zeros(0), rows, pad_id=0)


def _trainer_job(url: str, ports: dict) -> dict:
    """One rank of the trainer; the receiver serves at `url`, the weights-update group of each
    variant rendezvous at ports[variant]. Returns rank 0's observations (None elsewhere)."""
    import torch

    from chord_megatron.config import load_config
    from chord_megatron.rollout.sglang.client import SGLangClient
    from chord_megatron.rollout.sglang.engine import SGLangEngine
    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.weight_sync.nccl import NcclSync
    from chord_megatron.weight_sync.verified import WeightSync

    rank = int(os.environ["RANK"])
    batch = _token_batch()
    results = {}
    t0 = time.monotonic()
    for variant, port in ports.items():
        cfg = load_config(None, BASE + TRAIN + VARIANTS[variant])
        trainer = MegatronEngine(cfg)
        assert trainer.par.tp == 2 and trainer.par.dp == 1
        t_built = time.monotonic()
        eng = nccl = None
        sent = {}
        if rank == 0:  # only the trainer's rank 0 talks to the server (HTTP and the group)
            _wait_listening(url, timeout_s=90)
            # A fresh server of this variant's HF model, from other random weights.
            model = _post(url, "/_receiver/reset", {"overrides": BASE + VARIANTS[variant], "seed": 12345})
            assert model["tie_word_embeddings"] is cfg.model.tie_embeddings, model
            nccl = NcclSync("127.0.0.1", port, backend="gloo", bucket_mb=BUCKET_BYTES / 2**20, init_timeout_s=60)

            def transport(engine, named, version):
                """NcclSync, with a record of what it was given to send."""

                def recorded(items):
                    for name, t in items:
                        sent[name] = [
                            str(t.dtype).replace("torch.", ""),
                            list(t.shape),
                            float(t.double().sum()),
                            t.flatten()[:4].tolist(),
                        ]
                        yield name, t

                sent.clear()
                return nccl(engine, recorded(named), version)

            eng = SGLangEngine(
                SGLangClient([url], [url], backoff_s=0.05, timeout_s=60, control_timeout_s=60), weight_sync=transport
            )
        # The loop's sync: every rank walks export_weights() (collective), rank 0 converts the
        # stream to HF names and hands it to the engine (rollout.pause .. resume around it).
        weight_sync = WeightSync(trainer, eng, cfg)
        try:

            def push(version):
                weight_sync.push(version)
                if rank != 0:
                    return None
                s = eng.last_sync
                return {
                    "tensors": s.tensors,
                    "buckets": s.buckets,
                    "bytes": s.bytes,
                    "seconds": s.seconds,
                    "sent": dict(sent),
                }

            def gap():
                mine = trainer.compute_logprobs(batch)  # collective over the TP group
                if rank != 0:
                    return None
                served = _post(
                    url,
                    "/_receiver/logprobs",
                    {
                        "input_ids": batch.input_ids.tolist(),
                        "labels": batch.labels.tolist(),
                        "temperature": TEMPERATURE,
                    },
                )
                theirs = torch.tensor(served["logprobs"], dtype=torch.float32)
                assert theirs.shape == mine.shape, (theirs.shape, mine.shape)
                served["gap"] = float((mine - theirs).abs().max())  # every position of every row
                return served

            r = {"before": gap(), "t_built": t_built - t0, "t_ready": time.monotonic() - t0}
            r["sync1"] = push(1)
            r["after1"] = gap()
            r["stats1"] = _get(url, "/_fake/stats") if rank == 0 else None
            r["served1"] = eng.served_versions() if rank == 0 else None
            trainer.train_step(batch, 0, mu=1.0)  # expert rows only: one SFT step
            r["stale"] = gap()
            r["sync2"] = push(2)
            r["after2"] = gap()
            r["stats2"] = _get(url, "/_fake/stats") if rank == 0 else None
            r["served2"] = eng.served_versions() if rank == 0 else None
            r["t_done"] = time.monotonic() - t0
            results[variant] = r
        finally:
            if eng is not None:
                try:
                    nccl.close(eng)  # the group is torn down before the next variant joins one
                finally:
                    eng.close()
    return results if rank == 0 else None


def _start_receiver(log_dir: Path):
    from chord_megatron.rollout.sglang.router import ManagedProcess

    port = free_port()
    argv = [sys.executable, "-m", "tests.support.hf_weight_receiver", "--port", str(port), "--max-lifetime-s", "150"]
    env = dict(child_env(), OMP_NUM_THREADS="1")
    proc = ManagedProcess("hf-weight-receiver", argv, log_dir / "hf-weight-receiver.log", env=env).start()
    proc.url = f"http://127.0.0.1:{port}"
    return proc


def _wait_listening(url: str, timeout_s: float) -> None:
    """Until the server at `url` accepts connections."""
    port = int(url.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not start within {timeout_s:g} s")
            time.sleep(0.1)


@pytest.mark.timeout(300)
def test_nccl_sync_from_tp2_megatron_serves_the_trainers_logprobs(tmp_path):
    pytest.importorskip("megatron.core")
    pytest.importorskip("transformers")
    from tests.support.dist_harness import run_job

    t0 = time.monotonic()
    receiver = _start_receiver(tmp_path)
    try:
        # The trainer starts at once (importing megatron takes a while); its rank 0 waits for
        # the receiver before talking to it.
        ports = {v: free_port() for v in VARIANTS}
        try:
            (results, _) = run_job(_trainer_job, world=2, args=(receiver.url, ports), timeout=150)
        except BaseException as e:
            raise AssertionError(f"trainer job failed: {e}\nreceiver log:\n{receiver.log_tail(40)}") from e
    finally:
        receiver.stop()

    assert set(results) == set(VARIANTS)
    summary = {
        v: {
            k: (r[k]["gap"] if isinstance(r[k], dict) and "gap" in r[k] else r[k])
            for k in ("before", "after1", "stale", "after2", "t_built", "t_ready", "t_done")
        }
        for v, r in results.items()
    }
    print(json.dumps({"wall_s": time.monotonic() - t0, **summary}))
    for variant, r in results.items():
        tied = "untied" not in variant
        where = f"{variant}: "
        # A mismatch after the sync must not be the receiver's initial weights happening to agree.
        assert r["before"]["gap"] > 0.1, where + f"receiver already matched before any sync ({r['before']['gap']})"

        for n, version in ((1, "1"), (2, "2")):
            sync, after, st = r[f"sync{n}"], r[f"after{n}"], r[f"stats{n}"]
            # Every tensor arrived exactly as sent, and the model took all of them.
            received = {name: v for name, v in st["received"].items() if name in sync["sent"]}
            assert received == sync["sent"], where + "received tensors differ from the sent ones"
            assert set(st["received"]) == set(sync["sent"]), where + "names differ between sender and receiver"
            model_params = set(after["param_names"])
            assert set(sync["sent"]) == model_params, (where, set(sync["sent"]) ^ model_params)
            assert ("lm_head.weight" in sync["sent"]) is (not tied)
            loaded = [name for bucket in after["applied"] for name in bucket]
            assert loaded[-len(sync["sent"]) :] == list(sync["sent"]), where + "not loaded in the order of names"
            assert sync["tensors"] == len(sync["sent"]) and sync["buckets"] > 3, (where, sync)
            # The session and the version protocol.
            updates = [u for u in st["weight_updates"] if u["route"] == "/update_weights_from_distributed"]
            assert len(updates) == n * sync["buckets"]
            assert [u["weight_version"] for u in updates[-sync["buckets"] :]] == [None] * (sync["buckets"] - 1) + [
                version
            ]
            assert not st["session_open"]
            paths = [p for p, _ in st["requests"]]
            last = len(paths) - 1 - paths[::-1].index("/pause_generation")
            this_sync = [p for p in paths[last:] if p != "/init_weights_update_group"]  # joined in sync 1
            assert this_sync == (
                ["/pause_generation", "/begin_weight_update"]
                + ["/update_weights_from_distributed"] * sync["buckets"]
                + ["/end_weight_update", "/continue_generation"]
            ), (where, this_sync)
            assert list(r[f"served{n}"].values()) == [version] and after["weight_version"] == version
            # The served model is the trainer's model.
            assert after["gap"] < TOL, where + f"sync {version}: receiver log-probs differ by {after['gap']:.3g}"

        inits = [b for p, b in r["stats2"]["requests"] if p == "/init_weights_update_group"]
        assert len(inits) == 1, where + "the group is joined once and reused by the second sync"
        assert (inits[0]["rank_offset"], inits[0]["world_size"], inits[0]["backend"]) == (1, 2, "gloo")
        assert r["after2"]["joined_with"] in (
            "sglang.init_custom_process_group",
            "chord_megatron.weight_sync.nccl.join_group",
        )
        # The optimizer step changed the policy, and the second sync carried the change over.
        assert r["stale"]["gap"] > 1e-3, where + f"the optimizer step barely moved the policy ({r['stale']['gap']})"
        assert r["sync2"]["sent"] != r["sync1"]["sent"]
