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
    assert shown["model"]["name"] == "tiny-llama"  # from the file


def test_config_error_is_one_line_and_exit_2(capsys):
    assert main(["config", "show", str(ROOT / "configs/demo.yaml"), "parallel.tensor=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "chord: config error: command line: parallel.tensor: 3 does not divide model.num_attention_heads=4"


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "chord_megatron.cli", "config", "show", str(ROOT / "configs/demo.yaml")],
        capture_output=True, text=True, check=True,
    )
    assert "tiny-llama" in out.stdout


def test_readme_embeds_the_generated_config_reference():
    from chord_megatron.commands.config import BEGIN, END, reference

    readme = (ROOT / "README.md").read_text()
    assert BEGIN in readme and END in readme, "README.md lacks the config reference markers"
    embedded = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert embedded == reference().strip(), "README's config reference is stale: paste `chord config reference`"


def test_overrides_may_follow_options(capsys):
    assert main(["config", "show", str(ROOT / "configs/demo.yaml"), "train.steps=3"]) == 0
    capsys.readouterr()
    import pytest

    with pytest.raises(SystemExit):
        main(["config", "show", str(ROOT / "configs/demo.yaml"), "--bogus"])
