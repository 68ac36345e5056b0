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
from chord_megatron.run_dir import SETTINGS_FILE, save_settings
from tests.support.fake_trainer import Timed, started

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
    assert f"seed 1234: training into {run}, resuming at step 4, from its checkpoint" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5, STEPS]  # each step once: the resumed part went on from 4
    record = read_results(results)[0]
    assert record["resumed_at"] == [4] and record["wall_s"] >= first and record["wall_s_before"] == first


def test_a_run_that_fails_as_it_resumes_says_how_to_start_it_over(tmp_path, monkeypatch):
    """Run again, it would resume and fail the same way: the line says so, and what to do."""
    monkeypatch.setattr(compare, "start_trainer", started(trainer(stop_at=4)))
    with pytest.raises(RunFailed):
        compare_once(tmp_path)
    monkeypatch.setattr(compare, "start_trainer", started(lambda cmd: 1))  # a broken checkpoint, say
    run = tmp_path / "cmp" / "grpo"
    with pytest.raises(RunFailed, match=f"failed resuming from its checkpoint: remove {run} to start it over"):
        compare_once(tmp_path)


def edit_settings(run):
    path = run / SETTINGS_FILE
    path.write_text(path.read_text().replace("clip_low: 0.2", "clip_low: 0.3"))


def edit_provenance(**changes):
    def edit(run):
        path = run / "provenance.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return edit


@pytest.mark.parametrize(
    "change,why",
    [
        (lambda run: (run / SETTINGS_FILE).unlink(), f"it left no {SETTINGS_FILE} to compare settings with"),
        (edit_settings, "its settings differ: algorithm.clip_low: 0.3 -> 0.2"),
        (edit_provenance(commit="fed987"), "its commit was fed987, now abc123"),
        (edit_provenance(cpu="Another CPU"), "its cpu was Another CPU, now "),
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


def test_a_finished_run_of_other_settings_is_refused_and_of_the_same_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "start_trainer", started(trainer()))
    compare_once(tmp_path)
    monkeypatch.setattr(compare, "start_trainer", started(lambda cmd: pytest.fail("a finished run ran again")))
    compare_once(tmp_path)  # the same settings: kept
    with pytest.raises(ConfigError, match=r"holds a finished run of other settings \(train.seed: 1234 -> 7\)"):
        run_compare(
            "none.yaml",
            [*OVERRIDES, "train.seed=7"],
            load_config(None, [*OVERRIDES, "train.seed=7"]),
            tmp_path / "cmp",
            ["grpo"],
            progress=False,
        )


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
