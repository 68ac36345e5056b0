"""`chord train` with its output going to a file or a pipe (issue #16 item 5): the base-model
stage has progress of its own, and every progress display is plain lines, never redraws."""

import re

import pytest

from tests.support.chord_cli import DEMO, SHORT, chord

pytestmark = pytest.mark.slow


def test_base_stage_and_loop_report_progress_in_plain_lines(tmp_path):
    out = chord(
        "train",
        DEMO,
        *SHORT,
        "train.steps=3",
        "train.eval_every=0",
        f"base.cache_dir={tmp_path / 'cache'}",  # a fresh cache: the base stage runs
        f"train.output_dir={tmp_path / 'run'}",
    )
    assert "\r" not in out.stderr and "\r" not in out.stdout
    base = [
        m.groups() for m in re.finditer(r"^base model: step (\d+)/40 \((\d+)%\), .* step/s, loss=", out.stderr, re.M)
    ]
    assert base == [(str(4 * i), str(10 * i)) for i in range(1, 11)]
    loop = re.findall(r"^chord: step (\d+)/3 \(\d+%\), .* step/s, reward=", out.stderr, re.M)
    assert loop == ["1", "2", "3"]  # each step is more than a tenth of 3
    assert out.stdout.strip().splitlines()[-1].startswith("done: 3 steps; metrics: ")
