"""The output folder's lock: a second `chord train` into a folder another process holds is
refused, writing nothing; a holder that has ended (killed, too) leaves the folder free; --nproc's
workers run under their parent's lock (run_dir.py)."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from chord_megatron.cli import main
from chord_megatron.run_lock import LOCK_FILE
from tests.support.lock_holder import holding

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "demo.yaml")


@pytest.fixture
def holder(tmp_path):
    """Another process that holds the lock of tmp_path/run."""
    with holding(tmp_path / "run") as proc:
        yield proc


@pytest.fixture
def training(monkeypatch):
    """Training replaced by a note of the lock file as it was while it ran."""
    seen = []

    def train(cfg, **kw):
        seen.append(json.loads((pathlib.Path(cfg.train.output_dir) / LOCK_FILE).read_text()))
        return {}

    monkeypatch.setattr("chord_megatron.loop.train", train)
    monkeypatch.setattr("chord_megatron.commands.train.summarise_run", lambda cfg: None)
    return seen


def files(out):
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_a_folder_another_train_holds_is_refused_in_one_line_and_left_alone(tmp_path, capsys, holder, training):
    out = tmp_path / "run"
    (out / "metrics.jsonl").write_text('{"step": 0}\n')  # the live run's
    before = files(out)
    for flag in ("--overwrite", "--resume"):
        assert main(["train", DEMO, f"train.output_dir={out}", flag]) == 2
        assert capsys.readouterr().err == (
            f"chord: output folder: {out} is in use by a running chord train (pid {holder.pid} on "
            f"{socket.gethostname()}): wait for it to end, or stop it first\n"
        )
    assert training == [] and files(out) == before


def test_a_killed_holder_leaves_the_folder_free(tmp_path, holder, training):
    holder.kill()
    holder.wait()
    out = tmp_path / "run"
    assert main(["train", DEMO, f"train.output_dir={out}", "--no-progress"]) == 0
    assert training == [{"pid": os.getpid(), "host": socket.gethostname()}]


def test_the_lock_is_held_while_training_and_dropped_after(tmp_path, monkeypatch):
    out = tmp_path / "run"
    seen = []

    def train(cfg, **kw):  # another process tries the folder while this one trains
        probe = subprocess.run(
            [sys.executable, "-m", "chord_megatron.cli", "train", DEMO, f"train.output_dir={out}", "--resume"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k != "CHORD_OUTPUT_LOCK_HELD"},
        )
        seen.append((probe.returncode, probe.stderr))
        return {}

    monkeypatch.setattr("chord_megatron.loop.train", train)
    monkeypatch.setattr("chord_megatron.commands.train.summarise_run", lambda cfg: None)
    assert main(["train", DEMO, f"train.output_dir={out}", "--no-progress"]) == 0
    assert seen[0][0] == 2 and f"is in use by a running chord train (pid {os.getpid()} on" in seen[0][1]
    assert "CHORD_OUTPUT_LOCK_HELD" not in os.environ  # not left to a later command of this process
    assert main(["train", DEMO, f"train.output_dir={out}", "--no-progress", "--overwrite"]) == 0  # free again


def test_nproc_workers_run_under_their_parents_lock(tmp_path, monkeypatch, holder, training):
    out = tmp_path / "run"
    held = []
    monkeypatch.setattr(
        "chord_megatron.commands.train.relaunch",
        lambda n, argv: held.append(os.environ["CHORD_OUTPUT_LOCK_HELD"]) or 0,
    )
    free = tmp_path / "free"
    assert main(["train", DEMO, f"train.output_dir={free}", "--nproc", "2", "--no-progress"]) == 0
    assert held == [str((free / LOCK_FILE).resolve())]

    # a worker, rank 0 of its parent's torchrun, in a folder its parent (here: `holder`) holds
    monkeypatch.setenv("CHORD_OUTPUT_LOCK_HELD", str((out / LOCK_FILE).resolve()))
    assert main(["train", DEMO, f"train.output_dir={out}", "--no-progress"]) == 0
    assert training == [{"pid": holder.pid, "host": socket.gethostname()}]  # the parent's lock, untouched
