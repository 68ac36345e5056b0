"""SIGKILL mid-training, then --resume: the run ends exactly as an uninterrupted one (CPU, same seeds)."""

import signal
import subprocess
import time

import pytest

from chord_megatron.metrics.logger import read_metrics
from tests.support.chord_cli import DEMO, SHORT, chord

pytestmark = pytest.mark.slow

TIMING = ("seconds", "per_s")  # wall-clock metrics differ between any two runs


def comparable(records):
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING)} for r in records]


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, base_cache):
    args = [
        *SHORT,
        f"base.cache_dir={base_cache}",
        "train.steps=6",
        "train.eval_every=3",
        "checkpoint.save_every=2",
        "algorithm.mu.peak=0.5",
        "algorithm.mu.valley=0.1",
        "algorithm.mu.decay=6",
        "--no-progress",
    ]
    straight = tmp_path / "straight"
    chord("train", DEMO, *args, f"train.output_dir={straight}")

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
    assert len(read_metrics(metrics)) < len(read_metrics(straight / "metrics.jsonl"))

    chord("train", DEMO, *args, f"train.output_dir={killed}", "--resume")
    assert comparable(read_metrics(killed / "metrics.jsonl")) == comparable(read_metrics(straight / "metrics.jsonl"))
