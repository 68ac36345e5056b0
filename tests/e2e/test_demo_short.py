"""The demo, shortened: a few steps of the real loop, checking that the numbers move as they should."""

import math

import pytest

from chord_megatron.metrics.logger import read_metrics
from tests.support.chord_cli import DEMO, SHORT, chord

pytestmark = pytest.mark.slow


def train_short(config, out, base_cache, steps: int, *overrides):
    """`chord train CONFIG` shortened (SHORT) for `steps` steps into `out`: its output, every
    metrics record, and the optimiser steps' records (checked to be all `steps` of them)."""
    result = chord(
        "train",
        config,
        *SHORT,
        f"train.output_dir={out}",
        f"base.cache_dir={base_cache}",
        f"train.steps={steps}",
        *overrides,
        "--no-progress",
    )
    records = read_metrics(out / "metrics.jsonl")
    step_records = [r for r in records if "loss/total" in r]
    assert [r["step"] for r in step_records] == list(range(steps))
    return result, records, step_records


def test_short_demo_runs_and_learns(tmp_path, base_cache):
    out = tmp_path / "run"
    # mu = 1 for the first steps (pure SFT on the expert scratchpads), then CHORD.
    result, records, steps = train_short(
        DEMO,
        out,
        base_cache,
        8,
        "train.eval_every=4",
        "algorithm.mu.peak=1.0",
        "algorithm.mu.valley=0.1",
        "algorithm.mu.decay=8",
        "algorithm.token_weight=none",
        "optim.lr=2e-3",
    )
    assert "final evaluation: eval/accuracy=" in result.stdout
    # every logged number is finite
    for r in records:
        for k, v in r.items():
            if isinstance(v, float):
                assert math.isfinite(v), (r["step"], k, v)
    # mu follows the schedule: 1.0 at step 0, decaying
    assert steps[0]["mu"] == pytest.approx(1.0) and steps[-1]["mu"] < steps[1]["mu"] < 1.0
    # supervised learning on the expert rows works: their NLL falls
    assert steps[-1]["sft/nll"] < 0.8 * steps[0]["sft/nll"]
    # mu = 1 makes step 0 plain SFT (no rollouts); every later step rolls out
    assert "reward/mean" not in steps[0] and all("reward/mean" in r for r in steps[1:])
    # the rollout engine serves the trainer's weights: log-probs agree after every sync
    assert max(r["mismatch/max"] for r in steps[1:]) < 1e-3
    assert all(r["sync/verify_max_gap"] < 1e-3 for r in steps if "sync/verify_max_gap" in r)
    evals = [r for r in records if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 4, 8]  # the base model, then after 4 and 8 updates
    assert (out / "checkpoints").is_dir() and (out / "tensorboard").is_dir()

    # the trained weights leave as a Hugging Face folder that transformers loads
    hf = tmp_path / "hf"
    chord("export-hf", DEMO, out / "checkpoints", hf, *SHORT, f"train.output_dir={out}")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf)
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == 32


def test_malformed_data_file_stops_with_file_and_line(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "12+30=", "answer": "42"}\n{"prompt": "1+2=", "answer": }\n')
    expert = tmp_path / "expert.jsonl"
    expert.write_text('{"prompt": "11+30=", "response": "1+0+0=01,1+3+0=04|41"}\n')
    common = [
        DEMO,
        "data.task=jsonl",
        f"data.prompt_path={prompts}",
        f"data.expert_path={expert}",
        "base.steps=0",
        "train.steps=1",
        f"train.output_dir={tmp_path / 'run'}",
        "--no-progress",
    ]
    out = chord("train", *common, check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(f"chord: data error: {prompts}:2: not valid JSON")
    # the same file with data.on_bad_row=skip trains, dropping (and counting) the bad row
    chord("train", *common, "data.on_bad_row=skip", "train.eval_every=0")


def test_short_expert_demo_runs_its_schedule_from_its_own_base(tmp_path, base_cache):
    """configs/demo-expert.yaml, shortened: 3-digit sums, a base stopped by its step budget before
    the target, CHORD-mu's schedule from 0.9, and the imperfect expert's rows in every step."""
    result, records, steps = train_short(
        DEMO.with_name("demo-expert.yaml"), tmp_path / "run", base_cache, 4, "train.eval_every=4"
    )
    assert "base stage: 40 steps" in result.stdout
    # mu(step) = 0.9 -> 0.1 by cosine over 1200 steps: still within 1e-4 of 0.9 after 3 steps
    assert steps[0]["mu"] == pytest.approx(0.9) and 0.9 - 1e-4 < steps[-1]["mu"] < 0.9
    assert all(r["tokens/expert"] > 0 and math.isfinite(r["sft/nll"]) for r in steps)
    evals = [r for r in records if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 4] and evals[0]["eval/accuracy"] < 0.05  # 3-digit sums: a weak base
