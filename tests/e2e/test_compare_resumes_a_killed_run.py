"""`chord compare` with a real trainer killed mid-run, then the same command again: the run goes
on from its checkpoint and ends with the records of an uninterrupted compare (compare_runs.py)."""

import json

import pytest

from chord_megatron.metrics.logger import read_metrics
from tests.support.chord_cli import DEMO, SHORT, chord, comparable

pytestmark = pytest.mark.slow

ARGS = [*SHORT, "train.steps=6", "train.eval_every=3", "checkpoint.save_every=2", "--variants", "grpo"]


def test_compare_resumes_a_killed_run_to_the_uninterrupted_records(tmp_path, base_cache, monkeypatch):
    monkeypatch.setenv("CHORD_COMMIT", "e2e-test")  # a clean commit to resume at (a checkout under work is dirty)
    args = [*ARGS, f"base.cache_dir={base_cache}", "--no-progress"]
    straight = tmp_path / "straight"
    chord("compare", DEMO, *args, "--out", straight)

    out = tmp_path / "killed"
    # the trainer is killed after step 3's record, before the checkpoint after update 4
    monkeypatch.setenv("CHORD_TEST_KILL", "between-record-and-checkpoint:3")
    killed = chord("compare", DEMO, *args, "--out", out, check=False)
    assert killed.returncode == 1, killed.stderr[-3000:]
    assert "grpo failed (exit -9)" in killed.stderr and "The same command continues the grid" in killed.stderr
    monkeypatch.delenv("CHORD_TEST_KILL")

    again = chord("compare", DEMO, *args, "--out", out)
    assert f"grpo: training into {out / 'grpo'}, resuming at step 2, from its checkpoint" in again.stdout
    records = read_metrics(out / "grpo" / "metrics.jsonl")
    assert comparable(records) == comparable(read_metrics(straight / "grpo" / "metrics.jsonl"))
    prov = json.loads((out / "grpo" / "provenance.json").read_text())
    assert prov["resumed_at"] == [2] and prov["wall_s"] > prov["wall_s_before"] > 0
