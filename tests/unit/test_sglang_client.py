"""The SGLang client and engine against fake SGLang workers on loopback, without a router:
coverage of every sample, retries, failover, timeouts, flush/abort/pause, weight-update sessions.

Every worker is a subprocess that exits by itself (--max-lifetime-s) and is stopped by PID."""

import dataclasses
import json
import threading
import time
import urllib.request

import pytest

from chord_megatron.rollout.engine import RolloutError, SamplingParams
from chord_megatron.rollout.sglang import protocol as proto
from chord_megatron.rollout.sglang.client import SGLangClient, SGLangError
from chord_megatron.rollout.sglang.engine import SGLangEngine
from tests.support import fake_sglang, sglang_contract

needs_wheel = pytest.mark.skipif(
    not sglang_contract.available(), reason="needs `pip install --no-deps sglang==0.5.23` and msgspec"
)
SP = SamplingParams(max_new_tokens=6, temperature=1.0, stop_token_ids=(fake_sglang.EOS,))
PROMPTS = [[i + 1, 7, 3 * i] for i in range(6)]


@pytest.fixture
def fakes(tmp_path):
    started = []

    def launch(n=1, **per_worker):
        args = {i: ["--max-lifetime-s", "60", *per_worker.get(f"w{i}", [])] for i in range(n)}
        ws = fake_sglang.launch_fake_workers(n, tmp_path, args)
        started.extend(ws)
        return ws

    yield launch
    for w in started:
        w.stop()


def engine_for(workers, **kw):
    kw.setdefault("backoff_s", 0.05)
    urls = [w.url for w in workers]
    return SGLangEngine(SGLangClient(urls, urls, **kw))


def stats(worker):
    with urllib.request.urlopen(worker.url + "/_fake/stats", timeout=5) as r:
        return json.loads(r.read())


def assert_answers_its_prompt(rollouts, vocab=64):
    """Each response is the one the fake draws for (its prompt, its sample index)."""
    for r in rollouts:
        toks, finish = fake_sglang.sample_tokens(
            r.prompt_ids, r.sample_index, SP.max_new_tokens, list(SP.stop_token_ids), vocab
        )
        assert r.response_ids == toks, (r.prompt_index, r.sample_index)
        assert r.finish_reason == finish["type"]
        assert r.logprobs == [pytest.approx(fake_sglang.token_logprob(t, k)) for k, t in enumerate(toks)]


@needs_wheel
def test_fake_worker_speaks_sglang_types(fakes):
    api = sglang_contract.load_api_types()
    (w,) = fakes(1)
    for n in (1, 3):
        req = urllib.request.Request(
            w.url + "/generate",
            data=json.dumps(proto.generate_body([5, 6], SP, n)).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            payload = json.loads(r.read())
        items = payload if isinstance(payload, list) else [payload]
        assert len(items) == n and isinstance(payload, list) == (n > 1)
        for it in items:
            decoded = api.GenerateResponse.from_json_value(it)
            assert decoded.meta_info.output_token_logprobs[0].token_id == decoded.output_ids[0]
    with urllib.request.urlopen(w.url + "/model_info", timeout=5) as r:
        assert api.GetModelInfoResponse.from_json_value(json.loads(r.read())).weight_version == "default"


def test_generate_covers_every_sample_of_every_prompt(fakes):
    ws = fakes(2)
    with engine_for(ws) as eng:
        out = eng.generate(PROMPTS, 3, SP)
    assert [(r.prompt_index, r.sample_index) for r in out] == [(p, s) for p in range(6) for s in range(3)]
    assert_answers_its_prompt(out)
    assert {r.finish_reason for r in out} == {"stop", "length"}
    assert {r.weight_version for r in out} == {"default"}
    # Requests were spread over both workers, one request per prompt.
    assert [stats(w)["generate_received"] for w in ws] == [3, 3]


def test_malformed_json_is_retried(fakes):
    (w,) = fakes(1, w0=["--malformed", "2"])
    with engine_for([w], max_retries=3) as eng:
        out = eng.generate(PROMPTS[:3], 2, SP)
    assert_answers_its_prompt(out)
    assert stats(w)["generate_received"] == 3 + 2


def test_malformed_forever_fails_naming_the_server(fakes):
    (w,) = fakes(1, w0=["--malformed", "1000"])
    with engine_for([w], max_retries=2) as eng:
        with pytest.raises(
            RolloutError, match=rf"prompt 0: /generate failed 3 times: {w.url}: malformed answer: not JSON"
        ):
            eng.generate(PROMPTS[:1], 2, SP)


def test_dead_worker_fails_over_without_losing_or_repeating_samples(fakes):
    ws = fakes(2, w0=["--die-after", "2", "--delay-s", "0.05"])
    with engine_for(ws, max_retries=2) as eng:
        out = eng.generate(PROMPTS, 4, SP)  # engine checks (prompt, sample) coverage itself
        assert len(out) == 24
        assert_answers_its_prompt(out)
        assert eng.run(eng.client.health()) == {ws[0].url: False, ws[1].url: True}
        with pytest.raises(SGLangError, match=ws[0].url + "/model_info failed"):
            eng.served_versions()
    assert not ws[0].alive()


def test_slow_worker_times_out_and_the_request_moves(fakes):
    ws = fakes(2, w0=["--delay-s", "5"])
    with engine_for(ws, timeout_s=0.5, max_retries=2) as eng:
        t0 = time.monotonic()
        out = eng.generate(PROMPTS[:4], 2, SP)
        assert time.monotonic() - t0 < 4.0
    assert_answers_its_prompt(out)


def test_starting_worker_503_is_retried(fakes):
    (w,) = fakes(1, w0=["--starting-s", "0.8"])
    with engine_for([w], max_retries=8, backoff_s=0.2) as eng:
        assert not eng.health()
        out = eng.generate(PROMPTS[:2], 2, SP)
        assert eng.health()
    assert_answers_its_prompt(out)


@needs_wheel  # the fake applies SGLang's own /generate contract gate when the wheel is there
def test_rejected_request_fails_at_once_with_sglang_message(fakes, monkeypatch):
    (w,) = fakes(1)
    real = proto.sampling_params_body
    monkeypatch.setattr(proto, "sampling_params_body", lambda p, n=1, seed=None: {**real(p, n, seed), "max_tokens": 5})
    with engine_for([w], max_retries=3) as eng:
        with pytest.raises(RolloutError, match=r"rejected the request \(HTTP 400: unknown field `max_tokens`"):
            eng.generate(PROMPTS[:1], 1, SP)
    assert stats(w)["generate_received"] == 0  # refused at the gate, never retried into the worker


def test_flush_cache_retries_while_busy(fakes):
    (w,) = fakes(1, w0=["--flush-busy", "3"])
    with engine_for([w]) as eng:
        eng.flush_cache()
    assert sum(1 for path, _ in stats(w)["requests"] if path == "/flush_cache") == 4


def test_flush_cache_gives_up_naming_the_server(fakes):
    (w,) = fakes(1, w0=["--flush-busy", "100000"])
    with engine_for([w]) as eng:
        with pytest.raises(SGLangError, match=rf"{w.url}/flush_cache failed \(HTTP 400\): Flush cache failed"):
            eng.run(eng.client.flush_cache(timeout_s=0.5, interval_s=0.05))


def test_abort_returns_running_samples_as_abort(fakes):
    (w,) = fakes(1, w0=["--delay-s", "3"])
    with engine_for([w], timeout_s=10) as eng:
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("out", eng.generate(PROMPTS[:2], 2, SP)))
        t0 = time.monotonic()
        t.start()
        time.sleep(0.4)
        eng.abort()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - t0 < 2.5
    out = result["out"]
    assert [(r.prompt_index, r.sample_index) for r in out] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert {r.finish_reason for r in out} == {"abort"}


def test_pause_holds_new_work_until_resume(fakes):
    (w,) = fakes(1)
    with engine_for([w]) as eng:
        eng.pause()
        st = stats(w)
        assert st["paused"] and st["requests"][-1] == ["/pause_generation", {"mode": "abort"}]
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("out", eng.generate(PROMPTS[:1], 2, SP)))
        t.start()
        time.sleep(0.4)
        assert t.is_alive()
        eng.resume()
        t.join(5)
        assert len(result["out"]) == 2


def test_weight_update_session_tensor_route_and_versions(fakes):
    ws = fakes(2)
    with engine_for(ws) as eng:
        c = eng.client

        async def sync():
            async with c.weight_update_session():
                for w in ws:
                    await c.update_weights_from_tensor(w.url, ["aGVsbG8="], weight_version="5")

        eng.run(sync())
        assert eng.served_versions() == {ws[0].url: "5", ws[1].url: "5"}
        assert {r.weight_version for r in eng.generate(PROMPTS[:2], 2, SP)} == {"5"}
        paths = [p for p, _ in stats(ws[0])["requests"]]
        assert paths[:3] == ["/begin_weight_update", "/update_weights_from_tensor", "/end_weight_update"]
        # Outside a session SGLang refuses the tensor route; the error names the worker and why.
        with pytest.raises(
            SGLangError, match=rf"{ws[0].url}/update_weights_from_tensor failed: call /begin_weight_update"
        ):
            eng.run(c.update_weights_from_tensor(ws[0].url, ["aGVsbG8="], weight_version="6"))


def test_session_is_closed_when_the_update_fails(fakes):
    (w,) = fakes(1)
    with engine_for([w]) as eng:
        c = eng.client

        async def failing():
            async with c.weight_update_session():
                assert stats(w)["session_open"]
                raise RuntimeError("broadcast failed")

        with pytest.raises(RuntimeError, match="broadcast failed"):
            eng.run(failing())
        assert not stats(w)["session_open"]


def test_distributed_route_needs_group_and_disk_route_needs_no_session(fakes):
    ws = fakes(2)
    with engine_for(ws) as eng:
        c = eng.client
        names, dtypes, shapes = ["model.norm.weight"], ["float32"], [[64]]

        async def distributed():
            async with c.weight_update_session():
                await c.update_weights_from_distributed(names, dtypes, shapes, weight_version="2")

        with pytest.raises(SGLangError, match="init_weights_update_group first"):
            eng.run(distributed())
        eng.run(c.init_weights_update_group("127.0.0.1", 29500, 3, {ws[0].url: 1, ws[1].url: 2}))
        eng.run(distributed())
        assert set(eng.served_versions().values()) == {"2"}
        init_bodies = [b for p, b in stats(ws[1])["requests"] if p == "/init_weights_update_group"]
        assert init_bodies[0]["rank_offset"] == 2 and init_bodies[0]["world_size"] == 3
        eng.run(c.update_weights_from_disk("/tmp/ckpt", weight_version="3"))
        assert set(eng.served_versions().values()) == {"3"}


def test_update_weights_without_transport_is_an_error(fakes):
    (w,) = fakes(1)
    with engine_for([w]) as eng:
        with pytest.raises(RolloutError, match="no weight transport"):
            eng.update_weights([], "1")
        calls = []
        eng.weight_sync = lambda engine, named, version: calls.append((list(named), version))
        eng.update_weights([("a", 1)], 4)
        assert calls == [([("a", 1)], "4")] and eng.weight_version == "4"


def test_seeded_sampling_sends_one_seeded_request_per_sample_and_repeats_exactly(fakes):
    from chord_megatron.data.seeding import sample_seed

    (w,) = fakes(1)
    seeded = dataclasses.replace(SP, seed=11)
    urls = [w.url]
    with SGLangEngine(SGLangClient(urls, urls, backoff_s=0.05), seeded=True) as eng:
        first = eng.generate(PROMPTS[:2], 3, seeded)
        again = eng.generate(PROMPTS[:2], 3, seeded)
        other = eng.generate(PROMPTS[:2], 3, dataclasses.replace(SP, seed=12))
    bodies = [b for p, b in stats(w)["requests"] if p == "/generate"]
    assert len(bodies) == 3 * 2 * 3 and {b["sampling_params"]["n"] for b in bodies} == {1}
    sent = [b["sampling_params"]["sampling_seed"] for b in bodies[:6]]
    assert sorted(sent) == sorted(sample_seed(11, p, j) for p in range(2) for j in range(3))
    assert [r.response_ids for r in first] == [r.response_ids for r in again]
    assert [r.response_ids for r in first] != [r.response_ids for r in other]
    for p in range(2):  # a group's samples differ from each other
        group = [tuple(r.response_ids) for r in first if r.prompt_index == p]
        assert len(set(group)) == 3
    assert [(r.prompt_index, r.sample_index) for r in first] == [(p, j) for p in range(2) for j in range(3)]


def test_unseeded_engine_keeps_one_request_per_prompt(fakes):
    (w,) = fakes(1)
    with engine_for([w]) as eng:
        eng.generate(PROMPTS[:2], 3, dataclasses.replace(SP, seed=11))
    bodies = [b for p, b in stats(w)["requests"] if p == "/generate"]
    assert [b["sampling_params"]["n"] for b in bodies] == [3, 3]
    assert all("sampling_seed" not in b["sampling_params"] for b in bodies)
