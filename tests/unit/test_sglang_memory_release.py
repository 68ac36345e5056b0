"""rollout.release_sglang_memory: colocated SGLang servers lend their KV cache (and weights) to
the train step. Against fake SGLang workers (tests/support/fake_sglang.py) that keep SGLang
0.5.23's rules: release needs --enable-memory-saver to free anything, a region is released once,
and a released region refuses what would touch it (/generate; a weight update while the weights
are released)."""

import pytest

from chord_megatron.config import ConfigError, load_config
from chord_megatron.memory_handover import release_rollout_memory, return_training_memory
from chord_megatron.rollout.engine import RolloutError, SamplingParams
from chord_megatron.rollout.sglang import protocol as proto
from chord_megatron.rollout.sglang.client import SGLangClient, SGLangError
from chord_megatron.rollout.sglang.engine import SGLangEngine
from chord_megatron.rollout.sglang.router import server_env
from tests.support import fake_sglang, sglang_contract

SP = SamplingParams(max_new_tokens=4, stop_token_ids=(fake_sglang.EOS,))
PROMPTS = [[5, 6, 7], [8, 9]]
ON = ["rollout.engine=sglang", "rollout.router_url=http://r:1", "rollout.release_sglang_memory=true"]


def disk_transport(engine, named, version):
    """A transport that reloads from a folder: enough to see when the weights were resumed."""
    return engine.run(engine.client.update_weights_from_disk("/ckpt", weight_version=version))


def engine_for(workers):
    urls = [w.url for w in workers]
    return SGLangEngine(SGLangClient(urls, urls, backoff_s=0.05), weight_sync=disk_transport)


def memory_calls(worker):
    return [(p, b["tags"]) for p, b in fake_sglang.stats(worker)["requests"] if p.endswith("memory_occupation")]


def test_memory_bodies_match_sglang_types():
    if not sglang_contract.available():
        pytest.skip("needs `pip install --no-deps sglang==0.5.23` and msgspec")
    body = proto.memory_occupation_body(["kv_cache", "weights"])
    assert body == {"tags": ["kv_cache", "weights"]}
    sglang_contract.validate_request("release_memory_occupation", body)
    sglang_contract.validate_request("resume_memory_occupation", body)
    with pytest.raises(ValueError, match="non-empty subset"):
        proto.memory_occupation_body([])  # SGLang reads no tags as every region
    with pytest.raises(ValueError, match="cuda_graph"):
        proto.memory_occupation_body(["cuda_graph"])


def test_a_step_with_a_sync_releases_kv_and_weights_and_takes_them_back_when_needed(tmp_path):
    cfg = load_config(None, ON)
    with fake_sglang.running(2, tmp_path, {i: ["--enable-memory-saver"] for i in range(2)}) as ws:
        eng = engine_for(ws)
        try:
            before = eng.generate(PROMPTS, 2, SP)
            release_rollout_memory(cfg, eng, sync_follows=True)
            assert [fake_sglang.stats(w)["released"] for w in ws] == [["kv_cache", "weights"]] * 2
            assert eng.released_memory == ("kv_cache", "weights")
            # the weights are garbage now: sampling before a weight update is refused
            with pytest.raises(RolloutError, match="no weight update has refilled them"):
                eng.generate(PROMPTS, 2, SP)
            return_training_memory(cfg)  # CPU: no cache to empty, a single process: no barrier
            eng.update_weights([], "1")  # resumes the weights first (the fake refuses otherwise)
            assert [fake_sglang.stats(w)["released"] for w in ws] == [["kv_cache"]] * 2
            after = eng.generate(PROMPTS, 2, SP)  # resumes the KV cache first
            assert [r.response_ids for r in after] == [r.response_ids for r in before]
            assert all(r.weight_version == "1" for r in after)
            for w in ws:
                assert memory_calls(w) == [
                    ("/release_memory_occupation", ["kv_cache", "weights"]),
                    ("/resume_memory_occupation", ["weights"]),
                    ("/resume_memory_occupation", ["kv_cache"]),
                ]
                paths = [p for p, _ in fake_sglang.stats(w)["requests"]]
                # idle first (SGLang asserts it): the flush comes right before the release
                assert paths[paths.index("/release_memory_occupation") - 1] == "/flush_cache"
        finally:
            eng.close()


def test_a_step_without_a_sync_keeps_the_weights(tmp_path):
    cfg = load_config(None, ON + ["rollout.sync_every=2"])
    with fake_sglang.running(1, tmp_path, {0: ["--enable-memory-saver"]}) as ws:
        eng = engine_for(ws)
        try:
            release_rollout_memory(cfg, eng, sync_follows=False)
            assert fake_sglang.stats(ws[0])["released"] == ["kv_cache"]
            assert len(eng.generate(PROMPTS, 1, SP)) == 2  # no update needed
            assert fake_sglang.stats(ws[0])["released"] == []
        finally:
            eng.close()


def test_off_by_default_touches_nothing(tmp_path):
    cfg = load_config(None, ["rollout.engine=sglang", "rollout.router_url=http://r:1"])
    with fake_sglang.running(1, tmp_path, {0: ["--enable-memory-saver"]}) as ws:
        eng = engine_for(ws)
        try:
            release_rollout_memory(cfg, eng, sync_follows=True)
            return_training_memory(cfg)
            assert memory_calls(ws[0]) == []
        finally:
            eng.close()


def test_a_server_without_the_memory_saver_is_named(tmp_path):
    with fake_sglang.running(2, tmp_path, {0: ["--enable-memory-saver"]}) as ws:
        eng = engine_for(ws)
        try:
            with pytest.raises(SGLangError, match="without --enable-memory-saver") as e:
                eng.release_memory(("kv_cache",))
            assert ws[1].url in str(e.value) and ws[0].url not in str(e.value)
            assert memory_calls(ws[0]) == [] and eng.released_memory == ()
        finally:
            eng.close()


def test_config_needs_sglang_and_its_memory_saver():
    with pytest.raises(ConfigError, match="rollout.release_sglang_memory.*needs rollout.engine=sglang"):
        load_config(None, ["rollout.release_sglang_memory=true"])
    with pytest.raises(ConfigError, match="sglang.enable_memory_saver: must be true"):
        load_config(None, ON + ["sglang.tp_size=1"])
    load_config(None, ON + ["sglang.tp_size=1", "sglang.enable_memory_saver=true"])
    with pytest.raises(ConfigError, match="rollout.asynchronous: cannot be combined"):
        load_config(None, ON + ["sglang.tp_size=1", "sglang.enable_memory_saver=true", "rollout.asynchronous=true"])


def test_servers_chord_starts_answer_health_without_generating():
    assert server_env(release_memory=False) is None
    assert server_env(release_memory=True)["SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION"] == "0"
