"""`chord compare` run again over a grid it left part-way: a stopped run continues from its
checkpoint when its settings, the commit and the CPU kind are the same, else starts over and says
why; a finished run of other settings is refused; Ctrl-C ends with the command that continues.
The trainers are stand-ins that write what `chord train` writes (compare_runs.py)."""

import json
import pathlib

import pytest

from chord_megatron.cli import main
from chord_megatron.commands import compare, compare_queue
from chord_megatron.commands.compare import RunFailed, run_compare
from chord_megatron.config import ConfigError, load_config
from chord_megatron.metrics.results import read_results
from chord_megatron.run_dir import SETTINGS_FILE, OutputDirError, save_settings
from chord_megatron.run_lock import LOCK_FILE
from tests.support.fake_trainer import Timed, started
from tests.support.lock_holder import holding

STEPS = 6
OVERRIDES = [f"train.steps={STEPS}", "train.eval_every=3", "base.steps=0"]


@pytest.fixture(autouse=True)
def commit(monkeypatch):
    """A clean commit for provenance (a checkout under development is "+dirty")."""
    monkeypatch.setenv("CHORD_COMMIT", "abc123")
    monkeypatch.setattr(compare, "load_config", lambda path, over: load_config(None, over))  # none.yaml


def run_cfg(cmd):
    """The config a trainer started with `cmd` runs (its key=value arguments)."""
    return load_config(None, [a for a in cmd[5:] if "=" in a and not a.startswith("--")])


def trainer(stop_at=None, calls=None):
    """A stand-in `chord train`: saves its settings as the real one does; with `stop_at`, logs the
    steps before it, saves a checkpoint there and ends as on Ctrl-C (130), else finishes."""

    def train(cmd):
        if calls is not None:
            calls.append(cmd)
        cfg = run_cfg(cmd)
        out = pathlib.Path(cfg.train.output_dir)
        save_settings(cfg)
        first = 0
        if "--resume" in cmd:
            first = int((out / "checkpoints" / "latest").read_text().rsplit("_", 1)[1])
        last = stop_at if stop_at is not None else STEPS
        rows = [{"step": s, "loss/total": 1.0} for s in range(first, last)]
        rows += [{"step": STEPS, "eval/accuracy": 0.5}] if stop_at is None else []
        with open(out / "metrics.jsonl", "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
        if stop_at is None:
            return 0
        step = out / "checkpoints" / f"step_{stop_at:08d}"
        step.mkdir(parents=True)
        (step / "metadata.json").write_text("{}")
        (out / "checkpoints" / "latest").write_text(step.name)
        return 130

    return train


def compare_once(tmp_path, **kw):
    return run_compare(
        "none.yaml", OVERRIDES, load_config(None, OVERRIDES), tmp_path / "cmp", ["grpo"], progress=False, **kw
    )


def test_a_stopped_run_resumes_from_its_checkpoint_and_records_both_parts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare, "start_trainer", started(trainer(stop_at=4)))
    with pytest.raises(RunFailed, match=r"\[1/2\] grpo seed 1234 was stopped \(exit 130\)"):
        compare_once(tmp_path, seeds=[1234, 1235])  # a trainer stopped alone: the grid stops too
    assert "seed 1234: stopped after" in capsys.readouterr().out
    (run,) = (tmp_path / "cmp" / "grpo").glob("lr*/seed1234")
    first = json.loads((run / "provenance.json").read_text())["wall_s"]

    calls = []
    monkeypatch.setattr(compare, "start_trainer", started(trainer(calls=calls)))
    results = tmp_path / "r.jsonl"
    compare_once(tmp_path, seeds=[1234, 1235], record=results)
    assert calls[0][-1] == "--resume" and not {"--resume", "--overwrite"} & set(calls[1])  # seed 1235: new
    out = capsys.readouterr().out
    assert f"{tmp_path / 'cmp'}: 0 of 2 runs done (kept), 1 stopped part-way (each resumes or starts over" in out
    assert "1 not started" in out
    assert f"seed 1234: training into {run}, resuming at step 4, from its checkpoint" in out
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5, STEPS]  # each step once: the resumed part went on from 4
    record = read_results(results)[0]
    assert record["resumed_at"] == [4] and record["wall_s"] >= first and record["wall_s_before"] == first


def edit_provenance(**changes):
    def edit(run):
        path = run / "provenance.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return edit


@pytest.mark.parametrize(
    "change,why",
    [
        (lambda run: (run / SETTINGS_FILE).unlink(), f"it left no {SETTINGS_FILE} to compare settings with"),
        (edit_provenance(commit="fed987"), "its commit was fed987, now abc123"),
        (edit_provenance(cpu="Another CPU"), "its cpu was Another CPU, now "),
        (edit_provenance(torch="2.0.0"), "its torch was 2.0.0, now "),
        (edit_provenance(trainer_threads=64), "its trainer_threads was 64, now "),
        (lambda run: (run / "provenance.json").write_text("null"), "it left no readable provenance.json"),
        (lambda run: (run / "checkpoints" / "latest").unlink(), "it left no checkpoint"),
    ],
)
def test_a_stopped_run_starts_over_when_what_its_numbers_depend_on_changed(tmp_path, monkeypatch, capsys, change, why):
    monkeypatch.setattr(compare, "start_trainer", started(trainer(stop_at=4)))
    with pytest.raises(RunFailed):
        compare_once(tmp_path)
    change(tmp_path / "cmp" / "grpo")
    calls = []
    monkeypatch.setattr(compare, "start_trainer", started(trainer(calls=calls)))
    compare_once(tmp_path)
    assert calls[0][-1] == "--overwrite"
    assert f"training into {tmp_path / 'cmp' / 'grpo'}, starting over: {why}" in capsys.readouterr().out
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "cmp" / "grpo" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [*range(STEPS), STEPS]  # the earlier part's records went with it


def test_a_run_started_over_leaves_no_checkpoint_to_resume_even_if_its_trainer_never_ran(tmp_path, monkeypatch, capsys):
    """Starting over, compare removes the earlier run itself before it writes the new provenance:
    were the trainer stopped before it got that far, the old checkpoint beside the new provenance
    would be resumed by the next compare, under code it was not made with."""
    monkeypatch.setattr(compare, "start_trainer", started(trainer(stop_at=4)))
    with pytest.raises(RunFailed):
        compare_once(tmp_path)
    monkeypatch.setenv("CHORD_COMMIT", "def456")
    monkeypatch.setattr(compare, "start_trainer", started(lambda cmd: 130))  # Ctrl-C as it starts
    with pytest.raises(RunFailed):
        compare_once(tmp_path)
    calls = []
    monkeypatch.setattr(compare, "start_trainer", started(trainer(calls=calls)))
    compare_once(tmp_path)
    assert not {"--resume", "--overwrite"} & set(calls[0])  # a new run: nothing of the old one is left


def test_a_dirty_tree_starts_a_stopped_run_over(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare, "start_trainer", started(trainer(stop_at=4)))
    with pytest.raises(RunFailed):
        compare_once(tmp_path)
    monkeypatch.setenv("CHORD_COMMIT", "abc123+dirty")
    calls = []
    monkeypatch.setattr(compare, "start_trainer", started(trainer(calls=calls)))
    compare_once(tmp_path)
    assert calls[0][-1] == "--overwrite"
    assert (
        "starting over: the code is at abc123+dirty: a resumed run could not say which code" in capsys.readouterr().out
    )


def snapshot(folder, but=None):
    """Every file below `folder` (but those named `but`) and its bytes."""
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != but}


def compare_with(tmp_path, *extra):
    over = [*OVERRIDES, *extra]
    return run_compare("none.yaml", over, load_config(None, over), tmp_path / "cmp", ["grpo"], progress=False)


@pytest.mark.parametrize("stopped", [False, True])
def test_a_run_of_other_settings_is_refused_before_anything_runs(tmp_path, monkeypatch, stopped):
    """Finished or stopped, a run of other settings is another experiment: refused, untouched. A
    longer train.steps is one too (the finished run is not "stopped" at the new last step)."""
    monkeypatch.setattr(compare, "start_trainer", started(trainer(stop_at=4 if stopped else None)))
    try:
        compare_once(tmp_path)
    except RunFailed:
        assert stopped
    before = snapshot(tmp_path / "cmp")
    monkeypatch.setattr(compare, "start_trainer", started(lambda cmd: pytest.fail("a run of other settings ran")))
    for extra, first in (["train.seed=7"], "train.seed: 1234 -> 7"), (["train.steps=9"], "train.steps: 6 -> 9"):
        with pytest.raises(ConfigError, match=rf"grpo holds a run of other settings \({first}\); give another --out"):
            compare_with(tmp_path, *extra)
    assert snapshot(tmp_path / "cmp") == before


def test_a_run_another_process_is_training_is_refused_and_left_alone(tmp_path, monkeypatch):
    """The same compare run twice (the first one still going): the second touches none of the
    first one's runs, not even its provenance.json."""
    monkeypatch.setattr(compare, "start_trainer", started(trainer(stop_at=4)))
    with pytest.raises(RunFailed):
        compare_once(tmp_path)
    before = snapshot(tmp_path / "cmp")
    monkeypatch.setattr(compare, "start_trainer", started(lambda cmd: pytest.fail("a run in use ran")))
    with holding(tmp_path / "cmp" / "grpo"):
        with pytest.raises(OutputDirError, match="grpo is in use by a running chord train"):
            compare_once(tmp_path)
    assert snapshot(tmp_path / "cmp", but=LOCK_FILE) == before  # the holder's lock file aside


def test_a_finished_run_of_the_same_settings_is_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare, "start_trainer", started(trainer()))
    compare_once(tmp_path)
    assert "runs done (kept)" not in capsys.readouterr().out  # a first run says nothing of earlier ones
    monkeypatch.setattr(compare, "start_trainer", started(lambda cmd: pytest.fail("a finished run ran again")))
    compare_once(tmp_path)
    assert "1 of 1 runs done (kept), 0 stopped part-way" in capsys.readouterr().out


def test_a_shared_checkpoint_folder_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint.dir: .*keeps each run's checkpoints in its own folder"):
        compare_with(tmp_path, f"checkpoint.dir={tmp_path / 'ckpt'}")


@pytest.mark.parametrize(
    "rc,after,advice",
    [
        (1, None, "failed resuming from its checkpoint: remove"),  # no checkpoint since: it would fail again
        (-9, None, "The same command continues the grid"),  # killed: not the resume's fault
        (1, 5, "The same command continues the grid"),  # failed later, after a checkpoint past 4
    ],
)
def test_only_a_run_that_fails_as_it_resumes_is_told_to_start_over(tmp_path, monkeypatch, rc, after, advice):
    monkeypatch.setattr(compare, "start_trainer", started(trainer(stop_at=4)))
    with pytest.raises(RunFailed):
        compare_once(tmp_path)

    def fail(cmd):
        if after is not None:
            root = tmp_path / "cmp" / "grpo" / "checkpoints"
            (root / f"step_{after:08d}").mkdir()
            (root / f"step_{after:08d}" / "metadata.json").write_text("{}")
            (root / "latest").write_text(f"step_{after:08d}")
        return rc

    monkeypatch.setattr(compare, "start_trainer", started(fail))
    with pytest.raises(RunFailed, match=advice):
        compare_once(tmp_path)


def test_a_resumed_runs_wall_time_sums_its_parts(tmp_path, monkeypatch):
    clock = {"now": 1000.0}

    def trainer_taking(seconds, **kw):
        train = trainer(**kw)

        def timed(cmd):
            clock["now"] += seconds
            return train(cmd)

        return timed

    monkeypatch.setattr(compare.time, "time", lambda: clock["now"])
    monkeypatch.setattr(compare, "start_trainer", started(trainer_taking(30.0, stop_at=4)))
    with pytest.raises(RunFailed):
        compare_once(tmp_path)
    monkeypatch.setattr(compare, "start_trainer", started(trainer_taking(12.5)))
    compare_once(tmp_path)
    prov = json.loads((tmp_path / "cmp" / "grpo" / "provenance.json").read_text())
    assert (prov["wall_s_before"], prov["wall_s"], prov["resumed_at"]) == (30.0, 42.5, [4])


def test_ctrl_c_ends_compare_with_one_line_and_the_command_that_continues(tmp_path, monkeypatch, capsys):
    """The terminal's Ctrl-C reaches the trainers (each checkpoints and ends with 130) and compare:
    it waits for them, notes their wall times, and ends with exit 130 and the way on."""
    timed = Timed(lambda cmd: 3, trainer(stop_at=2), lambda cmd: None)
    monkeypatch.setattr(compare, "start_trainer", timed)

    def ctrl_c(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_queue.time, "sleep", ctrl_c)
    argv = ["compare", "configs/demo.yaml", *OVERRIDES, "--variants", "grpo", "--out", str(tmp_path / "cmp")]
    argv.append("--no-progress")
    monkeypatch.setattr("sys.argv", ["chord", *argv])
    assert main(argv) == 130
    out, err = capsys.readouterr()
    assert "grpo: stopped after 0 s, with a checkpoint" in out
    assert err.strip().splitlines()[-1] == (
        "chord: stopped. The same command continues the grid: finished runs are kept, stopped ones resume "
        f"from their checkpoints: chord {' '.join(argv)}"
    )
    assert isinstance(json.loads((tmp_path / "cmp" / "grpo" / "provenance.json").read_text())["wall_s"], float)
