"""The demo on 2 processes with TP=2, through `chord train --nproc 2`, matches the TP=1 run."""
import pytest

from chord_megatron.metrics import read_metrics

from conftest import DEMO, SHORT, chord

pytestmark = [pytest.mark.slow, pytest.mark.dist]


def test_tp2_demo_matches_tp1(tmp_path, base_cache):
    args = [*SHORT, f"base.cache_dir={base_cache}", "train.steps=4", "train.eval_every=4",
            "algorithm.mu.peak=0.5", "algorithm.mu.valley=0.1", "algorithm.mu.decay=4", "--no-progress"]  # fmt: skip
    chord("train", DEMO, *args, f"train.output_dir={tmp_path / 'tp1'}")
    chord("train", DEMO, *args, f"train.output_dir={tmp_path / 'tp2'}", "parallel.tensor=2", "--nproc", "2")
    one = read_metrics(tmp_path / "tp1" / "metrics.jsonl")
    two = read_metrics(tmp_path / "tp2" / "metrics.jsonl")
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        # Same weights, same seeds: the samples coincide (TP only reorders fp32 sums, far below
        # what it takes to flip a sampled token here), so rewards and lengths are equal ...
        for key in ("reward/mean", "response/length", "eval/accuracy", "eval/response_length"):
            if key in a:
                assert a[key] == b[key], (a["step"], key)
        # ... and the losses agree to fp32 tolerance.
        for key in ("loss/total", "loss/grpo", "loss/sft", "sft/nll", "entropy/rl", "grad_norm"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
