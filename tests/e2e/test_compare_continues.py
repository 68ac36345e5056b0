"""`chord compare` stopped part-way (a trainer killed; Ctrl-C), then the same command again: the
run goes on from its checkpoint and ends with the records of an uninterrupted compare
(compare_runs.py), with real trainers."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from chord_megatron.metrics.logger import read_metrics
from tests.support.chord_cli import DEMO, SHORT, chord, comparable

pytestmark = pytest.mark.slow

ARGS = [*SHORT, "train.steps=8", "train.eval_every=4", "checkpoint.save_every=2", "--variants", "grpo", "--no-progress"]


@pytest.fixture(autouse=True)
def clean_commit(monkeypatch):
    """A clean commit to resume at: a checkout under work is "+dirty", which starts runs over."""
    monkeypatch.setenv("CHORD_COMMIT", "e2e-test")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, base_cache):
    """The uninterrupted compare's run: its metrics records."""
    out = tmp_path_factory.mktemp("straight")
    chord("compare", DEMO, *ARGS, f"base.cache_dir={base_cache}", "--out", out)
    return comparable(read_metrics(out / "grpo" / "metrics.jsonl"))


def test_compare_resumes_a_killed_run_to_the_uninterrupted_records(tmp_path, base_cache, straight, monkeypatch):
    args = [*ARGS, f"base.cache_dir={base_cache}", "--out", tmp_path]
    # the trainer is killed after step 3's record, before the checkpoint after update 4
    monkeypatch.setenv("CHORD_TEST_KILL", "between-record-and-checkpoint:3")
    killed = chord("compare", DEMO, *args, check=False)
    assert killed.returncode == 1, killed.stderr[-3000:]
    assert "grpo failed (exit -9)" in killed.stderr and "The same command continues the grid" in killed.stderr
    monkeypatch.delenv("CHORD_TEST_KILL")

    again = chord("compare", DEMO, *args)
    assert f"grpo: training into {tmp_path / 'grpo'}, resuming at step 2, from its checkpoint" in again.stdout
    assert comparable(read_metrics(tmp_path / "grpo" / "metrics.jsonl")) == straight
    prov = json.loads((tmp_path / "grpo" / "provenance.json").read_text())
    assert prov["resumed_at"] == [2] and prov["wall_s"] > prov["wall_s_before"] > 0


def test_ctrl_c_stops_compare_with_the_command_that_resumes_it(tmp_path, base_cache, straight):
    args = [*ARGS, f"base.cache_dir={base_cache}", "--out", tmp_path]
    metrics = tmp_path / "grpo" / "metrics.jsonl"
    # its own session, so that the signal goes to its process group (compare and its trainer), as a
    # terminal's Ctrl-C does
    proc = chord(
        "compare", DEMO, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (metrics.exists() and read_metrics(metrics)):
        time.sleep(0.05)
    assert proc.poll() is None, "compare ended before Ctrl-C: " + proc.stderr.read()[-2000:]
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "grpo: stopped after" in stdout
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("chord: stopped. The same command continues the grid") and " --no-progress" in last
    command = last[last.index(": chord compare ") + 2 :]  # what the user would paste
    stopped_at = int((tmp_path / "grpo" / "checkpoints" / "latest").read_text().rsplit("_", 1)[1])
    assert 1 <= stopped_at < 8

    again = chord(*command.split()[1:])
    assert re.search(rf"grpo: training into \S+, resuming at step {stopped_at}, from its checkpoint", again.stdout)
    assert comparable(read_metrics(metrics)) == straight
