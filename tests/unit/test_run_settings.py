"""A run's config.resolved.yaml: `chord train` writes it, a config loaded from it is the run's own,
and `--resume` with other settings says which (run_dir.py)."""

import pathlib

from chord_megatron.cli import main
from chord_megatron.config import load_config
from chord_megatron.run_dir import SETTINGS_FILE, changed_settings, save_settings

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "demo.yaml")


def test_the_saved_settings_load_back_as_the_runs_config(tmp_path):
    cfg = load_config(DEMO, [f"train.output_dir={tmp_path}", "optim.lr=2e-5", "megatron.foo=1"])
    save_settings(cfg)
    assert load_config(tmp_path / SETTINGS_FILE).to_dict() == cfg.to_dict()
    assert changed_settings(cfg) == []


def test_changed_settings_names_each_change_and_not_where_files_go(tmp_path):
    over = [f"train.output_dir={tmp_path}"]
    save_settings(load_config(DEMO, over))
    same_run_elsewhere = ["checkpoint.save_every=7", "logging.progress=false", f"base.cache_dir={tmp_path / 'b'}"]
    assert changed_settings(load_config(DEMO, [*over, *same_run_elsewhere])) == []
    other = load_config(DEMO, [*over, "train.steps=9", "algorithm.mu.peak=0.5", "megatron.foo=1"])
    assert changed_settings(other) == [
        "algorithm.mu.peak: 0.1 -> 0.5",
        "train.steps: 300 -> 9",
        "megatron: {} -> {'foo': 1}",  # a pass-through key gained is a change
    ]
    assert changed_settings(load_config(DEMO, [f"train.output_dir={tmp_path / 'none'}"])) is None


def test_train_writes_its_settings_and_a_resume_with_others_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("chord_megatron.loop.train", lambda cfg, **kw: {})
    monkeypatch.setattr("chord_megatron.commands.train.summarise_run", lambda cfg: None)
    out = tmp_path / "run"
    assert main(["train", DEMO, f"train.output_dir={out}", "train.steps=5", "--no-progress"]) == 0
    assert load_config(out / SETTINGS_FILE).train.steps == 5
    assert main(["train", DEMO, f"train.output_dir={out}", "train.steps=5", "--resume", "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["train", DEMO, f"train.output_dir={out}", "train.steps=8", "--resume", "--no-progress"]) == 0
    assert capsys.readouterr().err == f"warning: --resume with other settings than {out}'s run: train.steps: 5 -> 8\n"
    assert load_config(out / SETTINGS_FILE).train.steps == 8  # the settings from here on
