"""`chord train` into the output folder of another run: refused unless --resume or --overwrite,
and --overwrite removes only the files the earlier run wrote (run_dir.py)."""

import json
import pathlib

import pytest

from chord_megatron.cli import main
from chord_megatron.config import load_config
from chord_megatron.run_dir import OutputDirError, check_output_dir

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "demo.yaml")


def earlier_run(out: pathlib.Path) -> None:
    """What a finished run leaves: 3 metric records, a TensorBoard event file, two checkpoints
    and the `latest` pointer, its curves and settings; and a file of the user's in the folder and in tensorboard/."""
    out.mkdir(parents=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss/total": 1.0}) + "\n" for s in range(3)))
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.1.host.1.0").write_bytes(b"\0")
    (out / "tensorboard" / "my-notes.txt").write_text("mine")
    for step in (2, 4):
        (out / "checkpoints" / f"step_{step:08d}").mkdir(parents=True)
        (out / "checkpoints" / f"step_{step:08d}" / "metadata.json").write_text("{}")
    (out / "checkpoints" / "latest").write_text("step_00000004\n")
    (out / "curves.png").write_bytes(b"png")
    (out / "config.resolved.yaml").write_text("train: {steps: 3}\n")
    (out / "notes.md").write_text("the user's own file")
    (out / "data").mkdir()
    (out / "data" / "rl.jsonl").write_text("{}\n")


def snapshot(out: pathlib.Path):
    return {str(p.relative_to(out)): p.read_bytes() if p.is_file() else None for p in sorted(out.rglob("*"))}


@pytest.fixture
def no_training(monkeypatch):
    """A test here must never get as far as training."""

    def refuse(*args, **kwargs):
        raise AssertionError("chord train went on to train")

    monkeypatch.setattr("chord_megatron.loop.train", refuse)
    monkeypatch.setattr("chord_megatron.commands.train.relaunch", refuse)


def test_train_into_another_runs_folder_is_refused_in_one_line(tmp_path, capsys, no_training):
    out = tmp_path / "run"
    earlier_run(out)
    before = snapshot(out)
    assert main(["train", DEMO, f"train.output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"chord: output folder: {out} already holds a run (metrics.jsonl (3 records), 1 TensorBoard event file, "
        "checkpoints step_00000002, step_00000004): continue it with --resume, or start over with --overwrite\n"
    )
    assert snapshot(out) == before  # nothing touched
    # --nproc: refused before the processes start
    assert main(["train", DEMO, f"train.output_dir={out}", "--nproc", "2"]) == 2
    assert snapshot(out) == before


def test_a_checkpoint_root_elsewhere_counts_too(tmp_path, capsys, no_training):
    ckpt = tmp_path / "ckpt"
    (ckpt / "step_00000003").mkdir(parents=True)
    out = tmp_path / "run"
    assert main(["train", DEMO, f"train.output_dir={out}", f"checkpoint.dir={ckpt}"]) == 2
    assert "already holds a run (checkpoint step_00000003)" in capsys.readouterr().err
    assert not out.exists()
    (out / "tensorboard").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 0}\n')
    assert main(["train", DEMO, f"train.output_dir={out}", f"checkpoint.dir={ckpt}"]) == 2
    assert "already holds a run (metrics.jsonl (1 record), checkpoint step_00000003)" in capsys.readouterr().err


def test_overwrite_removes_the_earlier_runs_files_and_nothing_else(tmp_path, capsys):
    out = tmp_path / "run"
    earlier_run(out)
    cfg = load_config(DEMO, [f"train.output_dir={out}"])
    check_output_dir(cfg, resume=False, overwrite=True)
    assert capsys.readouterr().out == (
        f"--overwrite: replacing the earlier run in {out}: metrics.jsonl (3 records), 1 TensorBoard event file, "
        "checkpoints step_00000002, step_00000004\n"
    )
    assert sorted(snapshot(out)) == [
        "checkpoints",
        "data",
        "data/rl.jsonl",
        "notes.md",
        "tensorboard",
        "tensorboard/my-notes.txt",
    ]
    check_output_dir(cfg, resume=False, overwrite=False)  # now a clean folder: a new run may start


def test_overwrite_with_nproc_clears_once_and_passes_the_flag_on(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    earlier_run(out)
    calls = []
    monkeypatch.setattr("chord_megatron.commands.train.relaunch", lambda n, argv: calls.append((n, argv)) or 0)
    assert main(["train", DEMO, f"train.output_dir={out}", "--nproc", "2", "--overwrite", "--no-progress"]) == 0
    assert calls == [(2, ["train", DEMO, f"train.output_dir={out}", "--overwrite", "--no-progress"])]
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints" / "latest").exists()
    assert (out / "notes.md").exists()


def test_resume_keeps_the_run_and_contradicting_flags_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    earlier_run(out)
    before = snapshot(out)
    cfg = load_config(DEMO, [f"train.output_dir={out}"])
    check_output_dir(cfg, resume=True, overwrite=False)
    assert snapshot(out) == before
    with pytest.raises(OutputDirError, match="give one"):
        check_output_dir(cfg, resume=True, overwrite=True)
    assert snapshot(out) == before


def test_a_new_or_unrelated_folder_is_fine(tmp_path):
    (tmp_path / "old" / "data").mkdir(parents=True)  # generated data alone is not a run
    (tmp_path / "old" / "notes.md").write_text("x")
    for out in (tmp_path / "new", tmp_path / "old"):
        check_output_dir(load_config(DEMO, [f"train.output_dir={out}"]), resume=False, overwrite=False)
    assert (tmp_path / "old" / "notes.md").read_text() == "x"
