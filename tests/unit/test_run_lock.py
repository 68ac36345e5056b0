"""The output folder's lock: a second `chord train` into a folder that a live one on this machine
is training into is refused; a lock left by a process that has ended, whose pid now names
another process, or from another machine is taken over; --nproc's workers run under their
parent's lock (run_dir.py)."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from chord_megatron.cli import main
from chord_megatron.run_dir import LOCK_FILE, _start_time

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "demo.yaml")


@pytest.fixture
def other_process():
    """A live process of this machine that is not this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def training(monkeypatch):
    """Training replaced by a note of the lock file as it was while it ran."""
    seen = []

    def train(cfg, **kw):
        path = pathlib.Path(cfg.train.output_dir) / LOCK_FILE
        seen.append(json.loads(path.read_text()) if path.exists() else None)
        return {}

    monkeypatch.setattr("chord_megatron.loop.train", train)
    monkeypatch.setattr("chord_megatron.commands.train.summarise_run", lambda cfg: None)
    return seen


def lock(out, **holder):
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK_FILE).write_text(json.dumps(holder))


def test_a_folder_in_use_by_a_live_train_is_refused_in_one_line(tmp_path, capsys, other_process, training):
    out = tmp_path / "run"
    pid = other_process.pid
    lock(out, host=socket.gethostname(), pid=pid, start=_start_time(pid))
    assert main(["train", DEMO, f"train.output_dir={out}", "--overwrite"]) == 2
    assert capsys.readouterr().err == (
        f"chord: output folder: {out} is in use by a running chord train (pid {pid}): wait for it to end, "
        "or stop it first\n"
    )
    assert training == [] and sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # the holder's lock stays


def test_a_lock_while_training_and_none_after(tmp_path, training):
    out = tmp_path / "run"
    assert main(["train", DEMO, f"train.output_dir={out}", "--no-progress"]) == 0
    assert training == [{"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}]
    assert not (out / LOCK_FILE).exists()


def ended_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(
    "holder",
    [
        lambda live: {"host": socket.gethostname(), "pid": ended_pid(), "start": "1"},  # killed
        lambda live: {"host": socket.gethostname(), "pid": live.pid, "start": "1"},  # its pid reused since
        lambda live: {"host": "another-node", "pid": live.pid, "start": _start_time(live.pid)},  # cannot be checked
    ],
)
def test_a_lock_that_cannot_be_a_live_train_here_is_taken_over(tmp_path, other_process, training, holder):
    out = tmp_path / "run"
    lock(out, **holder(other_process))
    assert main(["train", DEMO, f"train.output_dir={out}", "--no-progress"]) == 0
    assert training[0]["pid"] == os.getpid() and not (out / LOCK_FILE).exists()


def test_nproc_workers_run_under_their_parents_lock(tmp_path, monkeypatch, other_process, training):
    out = tmp_path / "run"
    held = []
    monkeypatch.setattr(
        "chord_megatron.commands.train.relaunch",
        lambda n, argv: held.append((os.environ["CHORD_OUTPUT_LOCK_HELD"], (out / LOCK_FILE).exists())) or 0,
    )
    assert main(["train", DEMO, f"train.output_dir={out}", "--nproc", "2", "--no-progress"]) == 0
    assert held == [(str((out / LOCK_FILE).resolve()), True)] and not (out / LOCK_FILE).exists()

    # a worker (rank 0 of the parent's torchrun): the parent, alive, holds the lock it inherited
    pid = other_process.pid
    lock(out, host=socket.gethostname(), pid=pid, start=_start_time(pid))
    monkeypatch.setenv("CHORD_OUTPUT_LOCK_HELD", str((out / LOCK_FILE).resolve()))
    assert main(["train", DEMO, f"train.output_dir={out}", "--no-progress"]) == 0
    assert training == [{"host": socket.gethostname(), "pid": pid, "start": _start_time(pid)}]  # the parent's
    assert (out / LOCK_FILE).exists()  # the parent removes it, not the worker
