"""A server paused for a weight sync stays in sglang-router's rotation.

SGLang 0.5.23's /health waits for a generated token, which a paused server does not produce
(then 503 after 20 s). The router's health-check flags (rollout/sglang/router.py) must outlast
a sync's pause. Checked through the REAL sglang-router in front of a fake worker that stalls
/health while paused, with time scaled down: SGLang's 20 s -> 1.5 s, the sync -> 6 s, a check
every second."""

import os
import shlex
import time

import pytest

from chord_megatron.rollout.engine import SamplingParams
from chord_megatron.rollout.sglang.client import SGLangClient
from chord_megatron.rollout.sglang.engine import SGLangEngine
from chord_megatron.rollout.sglang.router import (
    ROUTER_DEFAULTS,
    SGLANG_HEALTH_TIMEOUT_S,
    SYNC_PAUSE_TOLERANCE_S,
    health_check_options,
    router_command,
    router_workers,
    start_router,
)
from tests.support import fake_sglang

PAUSED_HEALTH_S = 1.5  # SGLang's 20 s, scaled
PAUSE_S = 6.0  # the sync, scaled
SP = SamplingParams(max_new_tokens=5, stop_token_ids=(fake_sglang.EOS,))
ROUTER_ENV = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="1")  # no hub lookups


def flag(argv, name):
    return argv[argv.index(name) + 1]


def test_router_command_waits_out_sglangs_health_limit_for_a_whole_sync():
    cmd = router_command(["http://127.0.0.1:1"], host="127.0.0.1", port=2)
    interval = int(flag(cmd, "--health-check-interval-secs"))
    assert int(flag(cmd, "--health-check-timeout-secs")) > SGLANG_HEALTH_TIMEOUT_S
    # more consecutive failures than fit into the tolerated pause, even at one per interval
    assert (int(flag(cmd, "--health-failure-threshold")) - 1) * interval >= SYNC_PAUSE_TOLERANCE_S
    assert health_check_options(pause_s=6, interval_s=1) == {
        "health_check_interval_secs": 1,
        "health_check_timeout_secs": 30,
        "health_failure_threshold": 7,
    }
    # sglang.router still wins over the defaults
    cmd = router_command(["http://127.0.0.1:1"], host="127.0.0.1", port=2, options={"health_failure_threshold": 4})
    assert flag(cmd, "--health-failure-threshold") == "4" and cmd.count("--health-failure-threshold") == 1


def test_the_slurm_launch_gets_the_same_health_flags():
    from chord_megatron.commands.launch.plan import router_args

    args = router_args({"model_path": "/m"})
    for key in ("health_check_interval_secs", "health_check_timeout_secs", "health_failure_threshold"):
        assert flag(args, "--" + key.replace("_", "-")) == str(ROUTER_DEFAULTS[key])
    assert shlex.split(shlex.join(args)) == args


@pytest.mark.slow
@pytest.mark.parametrize("tolerant", [True, False], ids=["derived-flags", "control-2-failures"])
def test_a_paused_worker_is_not_dropped_by_the_router(tmp_path, tolerant):
    pytest.importorskip("sglang_router", reason="needs the sglang-router wheel (the Rust gateway)")
    options = {"policy": "round_robin", "log_level": "warn"}
    if tolerant:
        options.update(health_check_options(pause_s=PAUSE_S, interval_s=1))
    else:  # what a short-sighted setting does: the test must be able to fail
        options.update(health_check_interval_secs=1, health_failure_threshold=2)
    (worker,) = started = fake_sglang.launch_fake_workers(
        1, tmp_path, {0: ["--max-lifetime-s", "90", "--model-path", str(tmp_path), "--paused-health-s", "1.5"]}
    )
    try:
        router = start_router([worker.url], options=options, log_dir=tmp_path, timeout_s=30, env=ROUTER_ENV)
        started.append(router)
        with SGLangEngine(SGLangClient([router.url], [worker.url], backoff_s=0.05)) as eng:
            eng.pause()
            healthy = []
            end = time.monotonic() + PAUSE_S
            while time.monotonic() < end:
                healthy.append(all(w["is_healthy"] for w in router_workers(router.url)))
                time.sleep(0.2)
            checks_while_paused = fake_sglang.stats(worker)["health_while_paused"]
            eng.resume()
            assert checks_while_paused >= 2  # the router did probe the paused worker, and got 503s
            if not tolerant:
                assert not all(healthy)  # dropped: the stall really is long enough to matter
                return
            assert all(healthy)
            out = eng.generate([[3, 11, 1], [4, 11, 2]], 2, SP)  # served right after the "sync"
            assert [(r.prompt_index, r.sample_index) for r in out] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    finally:
        for p in reversed(started):
            p.stop()
