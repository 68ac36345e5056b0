"""`chord compare`: the variants' commands (with per-variant overrides) and the report, with the
training processes replaced by a stand-in that writes the metrics a run would."""

import json
import pathlib

import pytest

from chord_megatron.commands import compare
from chord_megatron.commands.compare import run_compare
from chord_megatron.commands.compare_variants import parse_variant_overrides, variants
from chord_megatron.config import ConfigError, load_config
from tests.support.fake_trainer import started

OVERRIDES = ["train.steps=6", "train.eval_every=3"]


def test_parse_variant_overrides():
    known = ["grpo", "sft"]
    got = parse_variant_overrides(["grpo:optim.lr=3e-4", "sft:train.seed=2", "grpo:optim.min_lr=0"], known)
    assert got == {"grpo": ["optim.lr=3e-4", "optim.min_lr=0"], "sft": ["train.seed=2"]}
    with pytest.raises(ConfigError, match=r"--set: chord:optim.lr=1: unknown variant 'chord'; known: grpo, sft"):
        parse_variant_overrides(["chord:optim.lr=1"], known)
    with pytest.raises(ConfigError, match="expected VARIANT:key=value"):
        parse_variant_overrides(["optim.lr=1"], known)


def test_run_compare_passes_per_variant_overrides_and_reports_them(tmp_path, monkeypatch):
    cfg = load_config(None, OVERRIDES)
    calls = []

    def fake_train(cmd):
        calls.append(cmd)
        out = next(a.split("=", 1)[1] for a in cmd if a.startswith("train.output_dir="))
        lr = float(next((a.split("=", 1)[1] for a in reversed(cmd) if a.startswith("optim.lr=")), "0"))
        rows = [{"step": 0, "eval/accuracy": 0.25}, {"step": 6, "eval/accuracy": 0.5 + lr, "loss/total": 1.0}]
        pathlib.Path(out).mkdir(parents=True, exist_ok=True)  # compare made it, for provenance.json
        pathlib.Path(out, "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return 0

    monkeypatch.setattr(compare, "start_trainer", started(fake_train))
    # run_compare validates the per-variant keys by loading the config: there is no file here.
    monkeypatch.setattr("chord_megatron.commands.compare.load_config", lambda path, over: load_config(None, over))
    report = run_compare(
        "none.yaml",
        OVERRIDES,
        cfg,
        tmp_path / "cmp",
        ["grpo", "sft"],
        progress=False,
        per_variant={"grpo": ["optim.lr=0.125"]},
    )
    grpo, sft = calls
    table = variants(cfg)
    assert grpo[grpo.index("none.yaml") + 1 :] == [
        *OVERRIDES,
        *table["grpo"],
        "optim.lr=0.125",
        f"optim.min_lr={0.125 * cfg.optim.min_lr / cfg.optim.lr:.6g}",  # scaled as a grid rate's
        f"train.output_dir={tmp_path / 'cmp' / 'grpo'}",
        "--no-progress",
    ]
    assert "optim.lr=0.125" not in sft
    text = report.read_text()
    assert "- grpo: also optim.lr=0.125" in text and "sft: also" not in text
    assert "0.625" in text  # grpo's final accuracy, 0.5 + its lr, made it into the table


@pytest.mark.parametrize(
    "per_variant,error",
    [
        ({"sft": ["optim.nope=1"]}, "optim.nope"),
        ({"grpo": ["optim.lr=abc"]}, "optim.lr: expected a number"),  # not a traceback from scaling min_lr
    ],
)
def test_run_compare_refuses_a_bad_per_variant_override_before_training(tmp_path, monkeypatch, per_variant, error):
    monkeypatch.setattr(compare, "start_trainer", started(lambda cmd: pytest.fail("nothing may train")))
    monkeypatch.setattr("chord_megatron.commands.compare.load_config", lambda path, over: load_config(None, over))
    with pytest.raises(ConfigError, match=error):
        run_compare(
            "none.yaml", OVERRIDES, load_config(None, OVERRIDES), tmp_path, ["grpo", "sft"], per_variant=per_variant
        )


def test_run_compare_starts_an_unfinished_variant_over_and_skips_a_finished_one(tmp_path, monkeypatch):
    """A variant stopped part-way before its first checkpoint left a run in its folder: compare
    restarts it with --overwrite (chord train refuses the folder otherwise); a finished one is not
    run again (with a checkpoint: test_compare_resume.py)."""
    cfg = load_config(None, OVERRIDES)
    done = tmp_path / "cmp" / "sft"
    done.mkdir(parents=True)
    (done / "metrics.jsonl").write_text(json.dumps({"step": 6, "eval/accuracy": 0.5}) + "\n")
    stopped = tmp_path / "cmp" / "grpo"
    stopped.mkdir(parents=True)
    (stopped / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/accuracy": 0.25}) + "\n")
    calls = []

    def fake_train(cmd):
        calls.append(cmd)
        (stopped / "metrics.jsonl").write_text(json.dumps({"step": 6, "eval/accuracy": 0.5}) + "\n")
        return 0

    monkeypatch.setattr(compare, "start_trainer", started(fake_train))
    run_compare("none.yaml", OVERRIDES, cfg, tmp_path / "cmp", ["grpo", "sft"], progress=False)
    assert len(calls) == 1 and f"train.output_dir={stopped}" in calls[0] and calls[0][-1] == "--overwrite"
