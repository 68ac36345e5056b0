"""Ctrl-C during `chord train` (issue #16 item 3): the step under way is finished and saved, the
command ends with one line giving the way back (exit 130), and that command resumes the run to
the same records as an uninterrupted one, without the checkpoint-load warnings."""

import os
import shlex
import signal
import subprocess
import time

import pytest

from chord_megatron.metrics.logger import read_metrics
from tests.support.chord_cli import DEMO, SHORT, chord, comparable

pytestmark = pytest.mark.slow


STEPS = 12
ARGS = [*SHORT, f"train.steps={STEPS}", "train.eval_every=0", "checkpoint.save_every=0"]


def test_ctrl_c_stops_after_a_step_with_a_checkpoint_and_the_resume_command(tmp_path, base_cache):
    overrides = [*ARGS, f"base.cache_dir={base_cache}", f"train.output_dir={tmp_path / 'run'}"]
    metrics = tmp_path / "run" / "metrics.jsonl"
    # its own session, so that the signal goes to its process group, as a terminal's Ctrl-C does
    proc = chord(
        "train",
        DEMO,
        *overrides,
        "--no-progress",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (metrics.exists() and read_metrics(metrics)):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before Ctrl-C: " + proc.stderr.read()[-2000:]
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]

    records = read_metrics(metrics)
    stopped_at = len(records)  # one record per finished step: steps 0 .. N-1
    assert 1 <= stopped_at < STEPS and [r["step"] for r in records] == list(range(stopped_at))
    resume = shlex.join(["chord", "train", str(DEMO), *overrides, "--no-progress", "--resume"])
    assert stderr.strip().splitlines()[-1] == f"chord: stopped at step {stopped_at}; continue with: {resume}"
    root = tmp_path / "run" / "checkpoints"
    assert (root / "latest").read_text().strip() == f"step_{stopped_at:08d}"  # the stopped step, saved whole
    assert sorted(p.name for p in root.iterdir()) == ["latest", f"step_{stopped_at:08d}"]

    out = chord(*shlex.split(resume)[1:])  # the printed command, as the user would paste it
    assert "Warning" not in out.stderr, out.stderr[-3000:]  # checkpoint loads print no FutureWarnings
    assert out.stdout.strip().splitlines()[-1].startswith(f"done: {STEPS} steps; metrics: {metrics}")

    straight = tmp_path / "straight"
    chord("train", DEMO, *ARGS, f"base.cache_dir={base_cache}", f"train.output_dir={straight}", "--no-progress")
    assert comparable(read_metrics(metrics)) == comparable(read_metrics(straight / "metrics.jsonl"))
