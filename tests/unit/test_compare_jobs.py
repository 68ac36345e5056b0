"""`chord compare --jobs N`: the grid's runs from one queue, N at a time, never two training one
base model; with stand-in trainer processes that last a few polls and cache their base model on
the first, as a real trainer caches it after its base stage."""

import json
import pathlib

import pytest

from chord_megatron.commands import compare, compare_queue
from chord_megatron.commands.compare import RunFailed, run_compare
from chord_megatron.commands.compare_queue import QueuedRun, run_queue
from chord_megatron.config import load_config
from chord_megatron.demo.base_model import cache_path
from chord_megatron.metrics.results import read_results
from tests.support.fake_trainer import Timed

SEEDS = [1234, 1235, 1236]


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(compare_queue, "POLL_S", 0.01)  # the stand-ins last a few polls, not minutes


def overrides(tmp_path):
    return ["train.steps=6", "train.eval_every=3", "base.steps=50", f"base.cache_dir={tmp_path / 'bases'}"]


def arg(cmd, key):
    return next(a.split("=", 1)[1] for a in reversed(cmd) if a.startswith(f"{key}="))


def trainer_base(cmd):
    """The base model's file as the trainer finds it: from the config its command line gives."""
    return cache_path(load_config(None, [a for a in cmd if "=" in a and not a.startswith("-")]))


def write_metrics(cmd, rc=0):
    out = pathlib.Path(arg(cmd, "train.output_dir"))
    rows = [{"step": 0, "eval/accuracy": 0.25}, {"step": 6, "eval/accuracy": 0.5 + int(arg(cmd, "train.seed")) % 10}]
    if rc == 0:
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rc


def test_two_jobs_never_train_one_base_twice_and_run_the_whole_grid(tmp_path, monkeypatch):
    over = overrides(tmp_path)
    starts = []  # (seed, whether its base existed when the run started)

    def polls(cmd):
        starts.append((int(arg(cmd, "train.seed")), trainer_base(cmd).exists()))
        return 3

    fake = Timed(polls, write_metrics, trainer_base)
    monkeypatch.setattr(compare, "start_trainer", fake)
    results = tmp_path / "r.jsonl"
    cfg = load_config(None, over)
    run_compare(
        "none.yaml", over, cfg, tmp_path / "cmp", ["grpo", "sft"], progress=False, seeds=SEEDS, record=results, jobs=2
    )
    assert max(n for kind, _, n in fake.events if kind == "start") == 2  # two at once, never three
    for seed in SEEDS:  # each base trained by one run only: the others of its seed started from it
        assert [existed for s, existed in starts if s == seed].count(False) == 1, starts
    # sft at 1234 waited for grpo at 1234 to cache its base; the last seed's base went before the
    # runs that had theirs, so that it does not hold up the end of the grid
    assert [s for s, _ in starts[:3]] == [1234, 1235, 1236]
    records = read_results(results)
    assert {(r["variant"], r["seed"]) for r in records} == {(v, s) for v in ("grpo", "sft") for s in SEEDS}
    assert all((pathlib.Path(r["run_dir"]) / "train.log").exists() for r in records)  # each its own output


def test_one_job_at_a_time_trains_on_the_terminal(tmp_path, monkeypatch):
    over = overrides(tmp_path)
    outputs = []

    def polls(cmd):
        return 2

    fake = Timed(polls, write_metrics, trainer_base)

    def start(cmd, **kw):
        outputs.append(kw.get("stdout"))
        return fake(cmd)

    monkeypatch.setattr(compare, "start_trainer", start)
    cfg = load_config(None, over)
    run_compare("none.yaml", over, cfg, tmp_path / "cmp", ["grpo", "sft"], progress=False, seeds=SEEDS[:2])
    assert max(n for kind, _, n in fake.events if kind == "start") == 1
    assert outputs == [None] * 4  # the trainer's own progress bar, no log file


def test_after_a_failure_no_run_starts_and_the_running_one_is_kept(tmp_path, monkeypatch, capsys):
    over = overrides(tmp_path)

    def polls(cmd):
        return 2 if "algorithm.mu.peak=1" in cmd else 4  # sft ends first

    def train(cmd):
        out = pathlib.Path(arg(cmd, "train.output_dir"))
        if "algorithm.mu.peak=1" in cmd:  # sft fails, with its reason in its log
            (out / "train.log").write_text("chord: config error: the reason sft failed\n")
            return 1
        return write_metrics(cmd)

    over = [*over, "base.steps=0"]  # no base stage: grpo and sft start together
    fake = Timed(polls, train, lambda cmd: None)
    monkeypatch.setattr(compare, "start_trainer", fake)
    results = tmp_path / "r.jsonl"
    cfg = load_config(None, over)
    with pytest.raises(RunFailed, match=r"\[2/6\] sft seed 1234 failed \(exit 1\); its logs and metrics are in "):
        run_compare(
            "none.yaml",
            over,
            cfg,
            tmp_path / "cmp",
            ["grpo", "sft"],
            progress=False,
            seeds=SEEDS,
            record=results,
            jobs=2,
        )
    assert [kind for kind, _, _ in fake.events] == ["start", "start", "end", "end"]  # nothing after sft failed
    assert [(r["variant"], r["seed"]) for r in read_results(results)] == [("grpo", 1234)]  # grpo finished, recorded
    assert "the reason sft failed" in capsys.readouterr().out  # its log's tail, shown


def test_the_queue_says_what_is_running(capsys):
    class Process:
        def __init__(self, polls):
            self.left = polls

        def poll(self):
            self.left -= 1
            return 0 if self.left <= 0 else None

    done = []
    runs = [
        QueuedRun(f"[{i}/2] run{i}", pathlib.Path("."), None, lambda: Process(3), done.append, lambda: "step 3/6")
        for i in (1, 2)
    ]
    assert run_queue(runs, 2, poll_s=0, status_every_s=0) == []
    assert done == [0, 0]
    assert "running: [1/2] run1 step 3/6, [2/2] run2 step 3/6; 0 of 2 ended" in capsys.readouterr().out


def test_where_a_run_is_comes_from_its_metrics(tmp_path):
    base = tmp_path / "base.pt"
    assert compare_queue.run_progress(tmp_path, 600, base) == "(training its base model)"
    base.write_text("base")
    assert compare_queue.run_progress(tmp_path, 600, base) == compare_queue.run_progress(tmp_path, 600) == "(starting)"
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(341)))
    assert compare_queue.run_progress(tmp_path, 600) == "step 340/600"


def test_a_bad_jobs_count_is_a_one_line_error(capsys):
    from chord_megatron.cli import main

    assert main(["compare", "configs/demo.yaml", "--jobs", "0"]) == 2
    assert "--jobs: 0: must be >= 1" in capsys.readouterr().err


def test_more_threads_than_cores_is_said_before_the_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare, "start_trainer", Timed(lambda cmd: 1, write_metrics, lambda cmd: None))
    monkeypatch.setattr(compare_queue.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(compare, "load_config", lambda path, over: load_config(None, over))  # no file: none.yaml
    over = [*overrides(tmp_path), "base.steps=0"]
    cfg = load_config(None, [*over, "train.cpu_threads=1"])
    run_compare("none.yaml", over, cfg, tmp_path / "a", ["grpo"], progress=False, seeds=SEEDS[:2], jobs=2)
    assert "warning: --jobs" not in capsys.readouterr().err  # 2 x 1 thread on 2 cores
    per_variant = {"grpo": ["train.cpu_threads=2"]}
    run_compare(
        "none.yaml",
        over,
        cfg,
        tmp_path / "b",
        ["grpo"],
        progress=False,
        seeds=SEEDS[:2],
        jobs=2,
        per_variant=per_variant,
    )
    assert "warning: --jobs 2 trainers of up to 2 torch threads each on 2 cores" in capsys.readouterr().err


def test_ctrl_c_waits_for_the_running_trainers_then_stops(monkeypatch):
    """The terminal's Ctrl-C reaches the trainers too (each checkpoints and ends): the queue
    starts nothing more, waits for them to end, and raises KeyboardInterrupt."""

    class Process:
        waited = 0

        def poll(self):
            return None

        def wait(self):
            Process.waited += 1
            return 130

    def ctrl_c(_):
        raise KeyboardInterrupt

    started = []
    runs = [
        QueuedRun(f"run{i}", pathlib.Path("."), None, lambda i=i: started.append(i) or Process(), lambda rc: None)
        for i in range(3)
    ]
    monkeypatch.setattr(compare_queue.time, "sleep", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_queue(runs, 2, status_every_s=None)
    assert started == [0, 1] and Process.waited == 2
