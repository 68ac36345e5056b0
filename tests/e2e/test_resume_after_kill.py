"""SIGKILL mid-training, then --resume: the run ends exactly as an uninterrupted one (CPU, same seeds)."""

import signal
import subprocess
import time

import pytest

from chord_megatron.metrics.logger import read_metrics
from tests.support.chord_cli import DEMO, SHORT, chord, comparable

pytestmark = pytest.mark.slow


ARGS = [
    *SHORT,
    "train.steps=6",
    "train.eval_every=3",
    "checkpoint.save_every=2",
    "algorithm.mu.peak=0.5",
    "algorithm.mu.valley=0.1",
    "algorithm.mu.decay=6",
    "--no-progress",
]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, base_cache):
    """The uninterrupted run's metrics.jsonl."""
    out = tmp_path_factory.mktemp("straight")
    chord("train", DEMO, *ARGS, f"base.cache_dir={base_cache}", f"train.output_dir={out}")
    return read_metrics(out / "metrics.jsonl")


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, base_cache, straight):
    args = [*ARGS, f"base.cache_dir={base_cache}"]

    killed = tmp_path / "killed"
    proc = chord("train", DEMO, *args, f"train.output_dir={killed}", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    # Kill it once step 3 is logged: a checkpoint exists (after updates 2 and 4), the run is not done.
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any(r["step"] >= 3 for r in read_metrics(metrics)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(read_metrics(metrics)) < len(straight)

    chord("train", DEMO, *args, f"train.output_dir={killed}", "--resume")
    assert comparable(read_metrics(killed / "metrics.jsonl")) == comparable(straight)


def test_killed_between_a_steps_record_and_its_checkpoint_loses_no_record(tmp_path, base_cache, straight, monkeypatch):
    """The window between writing step 3's metrics record and the checkpoint after update 4:
    a kill there (the loop's test-only fault point) must not lose step 3's record on --resume."""
    args = [*ARGS, f"base.cache_dir={base_cache}", f"train.output_dir={tmp_path}"]
    monkeypatch.setenv("CHORD_TEST_KILL", "between-record-and-checkpoint:3")
    killed = chord("train", DEMO, *args, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    monkeypatch.delenv("CHORD_TEST_KILL")

    chord("train", DEMO, *args, "--resume")
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if "loss/total" in r] == [0, 1, 2, 3, 4, 5]  # each update exactly once
    assert [r["step"] for r in records if "eval/accuracy" in r] == [0, 3, 6]
    assert comparable(records) == comparable(straight)


def test_asynchronous_run_killed_and_resumed_matches_uninterrupted(tmp_path, base_cache, straight, monkeypatch):
    """rollout.asynchronous: step t+1's batch is generated during update t, by the weights before
    it; the checkpoint after update 2 therefore carries step 2's batch, which its own weights
    could not sample again. Killed after step 3's record, resumed from that checkpoint: the run
    ends exactly as an uninterrupted asynchronous one."""
    args = [*ARGS, f"base.cache_dir={base_cache}", "rollout.asynchronous=true"]
    whole = tmp_path / "whole"
    chord("train", DEMO, *args, f"train.output_dir={whole}")
    want = read_metrics(whole / "metrics.jsonl")

    monkeypatch.setenv("CHORD_TEST_KILL", "between-record-and-checkpoint:3")
    killed = chord("train", DEMO, *args, f"train.output_dir={tmp_path / 'killed'}", check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    monkeypatch.delenv("CHORD_TEST_KILL")
    chord("train", DEMO, *args, f"train.output_dir={tmp_path / 'killed'}", "--resume")
    assert comparable(read_metrics(tmp_path / "killed" / "metrics.jsonl")) == comparable(want)

    # One step off-policy: from step 1 on, the ratio is taken against the sampler's log-probs
    # (the weights one update older), so it is no longer 1; step 0's batch is on-policy.
    ratio = {r["step"]: r["ratio/mean"] for r in want if "ratio/mean" in r}
    assert ratio[0] == pytest.approx(1.0, abs=1e-6)
    assert all(abs(ratio[s] - 1.0) > 1e-6 for s in ratio if s > 0), ratio
    assert [r["step"] for r in want if "loss/total" in r] == [0, 1, 2, 3, 4, 5]
    assert comparable(want) != comparable(straight)
