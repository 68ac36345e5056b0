"""Fault tests through the REAL sglang-router (the Rust gateway from the `sglang-router` wheel)
in front of fake SGLang workers, all on loopback: a slow worker, one answering 503 while
starting, one dying mid-rollout, one answering malformed JSON, and all of them dead.

The rollout must either complete with every (prompt, sample) exactly once and each response the
one its prompt gets, or fail with an error naming the server. Every process is started here,
stopped by PID at teardown, and exits by itself after --max-lifetime-s anyway."""

import json
import os
import shutil
import sys
import time
import urllib.request

import pytest

from chord_megatron.rollout.engine import RolloutError, SamplingParams
from chord_megatron.rollout.sglang.client import SGLangClient
from chord_megatron.rollout.sglang.engine import SGLangEngine
from chord_megatron.rollout.sglang.router import router_workers, start_router, wait_router_ready
from tests.support import fake_sglang

pytest.importorskip("sglang_router", reason="needs the sglang-router wheel (the Rust gateway)")
pytestmark = pytest.mark.slow

SP = SamplingParams(max_new_tokens=5, stop_token_ids=(fake_sglang.EOS,))
PROMPTS = [[i + 2, 11, i] for i in range(8)]
ROUTER_OPTIONS = {
    "policy": "round_robin",
    "health_check_interval_secs": 1,
    "health_failure_threshold": 1,
    "retry_initial_backoff_ms": 20,
    "retry_max_backoff_ms": 200,
    "log_level": "warn",
}
# sglang-router fetches a tokenizer for the workers' model path; the fake reports a local folder,
# and these keep any hub lookup on loopback.
ROUTER_ENV = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="1")


@pytest.fixture
def cluster(tmp_path):
    started = []

    def launch(n=2, min_healthy=None, **per_worker):
        args = {
            i: ["--max-lifetime-s", "90", "--model-path", str(tmp_path), *per_worker.get(f"w{i}", [])] for i in range(n)
        }
        workers = fake_sglang.launch_fake_workers(n, tmp_path, args)
        started.extend(workers)
        router = start_router(
            [w.url for w in workers],
            options=ROUTER_OPTIONS,
            log_dir=tmp_path,
            timeout_s=30,
            env=ROUTER_ENV,
            min_healthy=min_healthy,
        )
        started.append(router)
        return router, workers

    yield launch
    for p in reversed(started):
        p.stop()
    assert not any(p.alive() for p in started)


def engine(router, workers, **kw):
    kw.setdefault("backoff_s", 0.05)
    return SGLangEngine(SGLangClient([router.url], [w.url for w in workers], **kw))


def received(worker):
    with urllib.request.urlopen(worker.url + "/_fake/stats", timeout=5) as r:
        return json.loads(r.read())["generate_received"]


def assert_complete_and_correct(out, n_prompts=len(PROMPTS), k=3):
    assert [(r.prompt_index, r.sample_index) for r in out] == [(p, s) for p in range(n_prompts) for s in range(k)]
    for r in out:
        toks, finish = fake_sglang.sample_tokens(r.prompt_ids, r.sample_index, SP.max_new_tokens, [fake_sglang.EOS], 64)
        assert (r.response_ids, r.finish_reason) == (toks, finish["type"])
        assert len(r.logprobs) == len(toks)


def test_router_spreads_requests_and_all_samples_arrive(cluster):
    router, ws = cluster(2)
    assert sorted(w["url"] for w in router_workers(router.url)) == sorted(w.url for w in ws)
    with engine(router, ws) as eng:
        out = eng.generate(PROMPTS, 3, SP)
    assert_complete_and_correct(out)
    assert [received(w) for w in ws] == [4, 4]  # round robin, one request per prompt


def test_slow_worker(cluster):
    # Slow but within the timeout: its requests are waited for, concurrently (serialised, its
    # four requests would take 4 x 1.5 s).
    router, ws = cluster(2, w0=["--delay-s", "1.5"])
    with engine(router, ws, timeout_s=30, max_retries=0) as eng:
        t0 = time.monotonic()
        out = eng.generate(PROMPTS, 3, SP)
        took = time.monotonic() - t0
    assert_complete_and_correct(out)
    assert 1.4 < took < 5.5
    assert [received(w) for w in ws] == [4, 4]


def test_stuck_worker_requests_time_out_and_move(cluster):
    # Slower than the client's timeout: each request stuck there is abandoned and sent again;
    # the router decides where, so it may take a few tries.
    router, ws = cluster(2, w0=["--delay-s", "60"])
    with engine(router, ws, timeout_s=0.5, max_retries=10) as eng:
        out = eng.generate(PROMPTS, 3, SP)
    assert_complete_and_correct(out)
    assert received(ws[0]) >= 4  # the first round robin pass did reach the stuck worker


def test_worker_answering_503_while_starting(cluster):
    # The router comes up with one healthy worker; the other answers 503 for 3 s.
    router, ws = cluster(2, min_healthy=1, w1=["--starting-s", "3"])
    healthy = {w["url"]: w["is_healthy"] for w in router_workers(router.url)}
    assert healthy.get(ws[1].url) is not True
    with engine(router, ws) as eng:
        out = eng.generate(PROMPTS, 3, SP)
        assert_complete_and_correct(out)
        assert received(ws[1]) == 0  # nothing was sent to the starting worker
        wait_router_ready(router.url, 2, timeout_s=15)
        out = eng.generate(PROMPTS, 3, SP)
    assert_complete_and_correct(out)
    assert received(ws[1]) > 0


def test_worker_dies_mid_rollout(cluster):
    router, ws = cluster(2, w0=["--die-after", "3", "--delay-s", "0.1"])
    with engine(router, ws, max_retries=3) as eng:
        out = eng.generate(PROMPTS, 3, SP)
        assert_complete_and_correct(out)
        assert not ws[0].alive()
        assert eng.run(eng.client.health()) == {ws[0].url: False, ws[1].url: True}
        out = eng.generate(PROMPTS, 3, SP)  # and the next rollout goes to the survivor
    assert_complete_and_correct(out)


def test_worker_returning_malformed_json(cluster):
    router, ws = cluster(2, w0=["--malformed", "3"])
    with engine(router, ws, max_retries=4) as eng:
        out = eng.generate(PROMPTS, 3, SP)
    assert_complete_and_correct(out)
    assert received(ws[0]) + received(ws[1]) == len(PROMPTS) + 3  # exactly the 3 broken answers were retried


def test_all_workers_dead_fails_naming_the_router(cluster):
    router, ws = cluster(2, w0=["--die-after", "1"], w1=["--die-after", "1"])
    with engine(router, ws, max_retries=2, timeout_s=10) as eng:
        t0 = time.monotonic()
        with pytest.raises(RolloutError, match=rf"/generate failed 3 times: {router.url}: HTTP 5\d\d"):
            eng.generate(PROMPTS[:2], 2, SP)
        assert time.monotonic() - t0 < 20
        assert not eng.health()


def test_the_router_runs_in_router_python_else_the_trainers(monkeypatch):
    from chord_megatron.rollout.sglang.router import router_command

    monkeypatch.delenv("ROUTER_PYTHON", raising=False)
    assert router_command(["http://127.0.0.1:1"], host="127.0.0.1", port=2)[:3] == [
        sys.executable,
        "-m",
        "sglang_router.launch_router",
    ]
    monkeypatch.setenv("ROUTER_PYTHON", "/envs/router/bin/python -X utf8")
    cmd = router_command(["http://127.0.0.1:1"], host="127.0.0.1", port=2)
    assert cmd[:5] == ["/envs/router/bin/python", "-X", "utf8", "-m", "sglang_router.launch_router"]


def test_router_binary_is_the_rust_gateway(monkeypatch):
    monkeypatch.delenv("ROUTER_PYTHON", raising=False)
    import sglang_router

    from chord_megatron.rollout.sglang.router import router_command

    cmd = router_command(["http://127.0.0.1:1"], host="127.0.0.1", port=2)
    assert cmd[1:3] == ["-m", "sglang_router.launch_router"]
    assert "--prometheus-port" in cmd and cmd[cmd.index("--prometheus-host") + 1] == "127.0.0.1"
    assert os.path.exists(
        os.path.join(os.path.dirname(sglang_router.__file__), "sglang_router_rs.abi3.so")
    ) or shutil.which("smg")


def test_deploy_over_running_servers_then_attach(tmp_path):
    from chord_megatron.config import RolloutConfig
    from chord_megatron.rollout.sglang.router import deploy

    workers = fake_sglang.launch_fake_workers(
        2, tmp_path, {i: ["--max-lifetime-s", "60", "--model-path", str(tmp_path)] for i in range(2)}
    )
    urls = [w.url for w in workers]
    try:
        dep = deploy(
            RolloutConfig(engine="sglang", server_urls=urls, startup_timeout_s=30),
            {"router": dict(ROUTER_OPTIONS)},
            log_dir=tmp_path,
        )
        try:
            assert dep.worker_urls == urls and len(dep.processes) == 1 and dep.generate_urls == [dep.router_url]
            attached = deploy(RolloutConfig(engine="sglang", router_url=dep.router_url), {}, log_dir=tmp_path)
            assert sorted(attached.worker_urls) == sorted(urls) and attached.processes == []
            with SGLangEngine(SGLangClient(attached.generate_urls, attached.worker_urls), deployment=attached) as eng:
                assert_complete_and_correct(eng.generate(PROMPTS, 3, SP))
            assert dep.processes[0].alive()  # closing an attached engine leaves the router running
        finally:
            router = dep.processes[0]
            dep.close()
            assert not router.alive()
    finally:
        for w in workers:
            w.stop()


def test_command_lines():
    from chord_megatron.rollout.sglang.router import cli_flags, server_command

    assert cli_flags({"tp_size": 2, "enable_metrics": True, "disable_x": False, "y": None, "urls": ["a", "b"]}) == [
        "--tp-size",
        "2",
        "--enable-metrics",
        "--urls",
        "a",
        "b",
    ]
    cmd = server_command(host="127.0.0.1", port=30001, options={"model_path": "/m", "tp_size": 2})
    assert cmd[1:3] == ["-m", "sglang.launch_server"] and cmd[-4:] == ["--model-path", "/m", "--tp-size", "2"]
    with pytest.raises(Exception, match="model_path"):
        server_command(host="h", port=1, options={})


def test_engine_from_config_serves_and_syncs_by_disk(tmp_path):
    import torch

    from chord_megatron.config import load_config

    workers = fake_sglang.launch_fake_workers(
        2, tmp_path, {i: ["--max-lifetime-s", "60", "--model-path", str(tmp_path)] for i in range(2)}
    )
    try:
        cfg = load_config(
            None,
            [
                f"train.output_dir={tmp_path}",
                "rollout.engine=sglang",
                "rollout.weight_sync=disk",
                f"rollout.server_urls=[{workers[0].url}, {workers[1].url}]",
            ],
        )
        with SGLangEngine.from_config(cfg) as eng:
            router = eng.deployment.processes[0]
            assert not eng.seeded  # rollout.seeded_sampling defaults to off
            assert_complete_and_correct(eng.generate(PROMPTS, 3, SP))
            eng.update_weights([("model.norm.weight", torch.ones(64))], 1)
            assert eng.served_versions() == {w.url: "1" for w in workers}
            assert eng.last_sync.transport == "disk" and eng.last_sync.bytes == 256
            assert {r.weight_version for r in eng.generate(PROMPTS[:2], 2, SP)} == {"1"}
        assert not router.alive()  # the engine started the router, so closing it stops it
    finally:
        for w in workers:
            w.stop()


def test_engine_from_config_takes_seeded_sampling(tmp_path, monkeypatch):
    import types

    from chord_megatron.config import load_config
    from chord_megatron.rollout.sglang import router

    closed = []
    fake = types.SimpleNamespace(
        generate_urls=["http://127.0.0.1:9"], worker_urls=["http://127.0.0.1:9"], close=lambda: closed.append(True)
    )
    monkeypatch.setattr(router, "deploy", lambda *a, **k: fake)
    for value in (True, False):
        cfg = load_config(
            None,
            [
                f"train.output_dir={tmp_path}",
                "rollout.engine=sglang",
                "rollout.router_url=http://127.0.0.1:9",
                f"rollout.seeded_sampling={str(value).lower()}",
            ],
        )
        with SGLangEngine.from_config(cfg) as eng:
            assert eng.seeded is value and eng.deployment is fake
    assert closed == [True, True]


@pytest.mark.parametrize("via_router", [False, True])
def test_a_request_given_up_on_is_dropped_by_the_server(cluster, via_router):
    """A request the client waits for is served; one it gives up on (0.3 s into a 1 s request)
    closes its connection and the worker sees that (SGLang 0.5.23 then aborts the request):
    directly, and through sglang-router, which must close its upstream connection too."""
    router, (w,) = cluster(1, w0=["--delay-s", "1"])
    urls = [router.url] if via_router else [w.url]

    def client(timeout_s):
        return SGLangEngine(SGLangClient(urls, [w.url], timeout_s=timeout_s, max_retries=0, backoff_s=0.05))

    with client(10.0) as eng:
        assert len(eng.generate(PROMPTS[:1], 1, SP)) == 1
    assert fake_stats(w)["generate_disconnected"] == 0
    with client(0.3) as eng:
        with pytest.raises(RolloutError, match="no answer within 0.3s"):
            eng.generate(PROMPTS[:1], 1, SP)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and fake_stats(w)["generate_disconnected"] < 1:
        time.sleep(0.05)
    s = fake_stats(w)
    assert (s["generate_received"], s["generate_disconnected"]) == (2, 1)


def fake_stats(worker):
    with urllib.request.urlopen(worker.url + "/_fake/stats", timeout=5) as r:
        return json.loads(r.read())
