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
        capture_output=True,
        text=True,
        check=True,
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


def test_every_error_chord_reports_has_the_one_root():
    from chord_megatron.commands.launch.layout import LayoutError
    from chord_megatron.config import ConfigError
    from chord_megatron.data.jsonl import DataError
    from chord_megatron.errors import ChordError
    from chord_megatron.hf.config import HFCheckpointError
    from chord_megatron.rewards import RewardError
    from chord_megatron.rollout.engine import RolloutError
    from chord_megatron.rollout.sglang.client import SGLangError
    from chord_megatron.rollout.sglang.router import DeploymentError
    from chord_megatron.weight_sync.verified import SyncVerificationError

    errors = (
        ConfigError,
        DataError,
        LayoutError,
        HFCheckpointError,
        RewardError,
        RolloutError,
        SGLangError,
        DeploymentError,
        SyncVerificationError,
    )
    assert all(issubclass(e, ChordError) for e in errors)
    assert {e: e.exit_code for e in errors if e.exit_code == 2} == {
        ConfigError: 2,
        DataError: 2,
        LayoutError: 2,
        HFCheckpointError: 2,
    }


def test_a_chord_error_is_one_line_with_its_exit_code(tmp_path, capsys):
    assert main(["config", "from-hf", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"chord: HFCheckpointError: {tmp_path}: no config.json (model.hf_path must be a local Hugging Face folder)"
    )


def test_other_errors_keep_their_traceback(monkeypatch):
    import pytest

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("chord_megatron.commands.config.show", broken)
    with pytest.raises(ZeroDivisionError):
        main(["config", "show", str(ROOT / "configs/demo.yaml")])


def test_pass_through_subcommands_read_their_own_options(capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["data", "prep-toolace", "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage: chord data prep-toolace")


def test_runtime_mistakes_end_in_one_line_with_the_way_out(tmp_path):
    """What a new user hits first (issue #16 item 3): one line on stderr, exit 2, no traceback."""
    demo = str(ROOT / "configs/demo.yaml")
    cases = [
        (
            ["train", demo, "parallel.tensor=2", "base.steps=0", f"train.output_dir={tmp_path / 'a'}"],
            "chord: config error: parallel: tensor x pipeline x context = 2 x 1 x 1: needs a multiple of 2 processes, "
            "this job has 1: start it with `chord train --nproc 2` (or torchrun --nproc-per-node)",
        ),
        (
            ["train", demo, "base.steps=0", f"train.output_dir={tmp_path / 'b'}", "--resume"],
            f"chord: checkpoint: {tmp_path / 'b' / 'checkpoints'}: neither a checkpoint nor a checkpoint root with a "
            "'latest' file",
        ),
        (
            ["compare", demo, "--variants", "grpo,typo", f"train.output_dir={tmp_path / 'c'}"],
            "chord: config error: --variants: typo: unknown variant; known: grpo, sft, sft-then-rl, chord-mu, chord-phi",
        ),
    ]
    for args, line in cases:
        out = subprocess.run(
            [sys.executable, "-m", "chord_megatron.cli", *args], capture_output=True, text=True, timeout=300, cwd=ROOT
        )
        assert out.returncode == 2, (args, out.stderr[-2000:])
        assert "Traceback" not in out.stderr, out.stderr[-2000:]
        assert out.stderr.strip().splitlines()[-1].removeprefix("[rank0]: ") == line
