"""The `chord` command line: config show and its one-line config errors."""
import pathlib
import subprocess
import sys

import yaml

from chord_megatron.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_config_show_prints_the_resolved_config(capsys):
    assert main(["config", "show", str(ROOT / "configs/demo.yaml"), "train.steps=3", "algorithm.mu.peak=0.3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["steps"] == 3
    assert shown["algorithm"]["mu"]["peak"] == 0.3
    assert shown["model"]["name"] == "tiny-qwen2"  # from the file


def test_config_error_is_one_line_and_exit_2(capsys):
    assert main(["config", "show", str(ROOT / "configs/demo.yaml"), "parallel.tensor=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "chord: config error: command line: parallel.tensor: 3 does not divide model.num_attention_heads=4"


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "chord_megatron.cli", "config", "show", str(ROOT / "configs/demo.yaml")],
        capture_output=True, text=True, check=True,
    )
    assert "tiny-qwen2" in out.stdout
