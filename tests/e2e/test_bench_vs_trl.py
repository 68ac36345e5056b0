"""`chord bench loop --vs-trl` as a user runs it (TRL installed; skipped, and reported, without):
a chord run and a TRL run of the same GRPO config, both speeds, the ratio and both curves
printed and recorded. What TRL is given is tested piece by piece in tests/unit/test_bench_trl.py."""

import json

import pytest

from tests.support.chord_cli import DEMO, SHORT, chord

pytestmark = pytest.mark.slow


def test_bench_loop_vs_trl_prints_and_records_both_sides(tmp_path, base_cache):
    pytest.importorskip("trl")
    record = tmp_path / "loop.jsonl"
    over = [*SHORT, f"base.cache_dir={base_cache}", "train.eval_every=2", "rollout.max_new_tokens=16"]
    out = chord("bench", "loop", DEMO, *over, "--steps", "3", "--runs", "1", "--record", record, "--vs-trl")
    assert "TRL 1.16.0 GRPOTrainer steps/s:" in out.stdout and "chord/TRL steps/s:" in out.stdout, out.stdout
    (r,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert r["command"].endswith("--steps 3 --vs-trl")
    assert "algorithm.mu.peak=0" in r["forced_overrides"]
    t = r["trl"]
    assert t["version"] == "1.16.0" and t["steps_per_s"] > 0 and len(t["steps_per_s_runs"]) == 1
    assert r["chord_over_trl"] == pytest.approx(r["steps_per_s"] / t["steps_per_s"])
    # both curves at the same steps: the base model, every 2nd update, the last
    assert sorted(r["eval_accuracy"]["0"]) == sorted(t["eval_accuracy"]["0"]) == ["0", "2", "3"]
    assert t["grpo_config"]["max_steps"] == 3 and t["grpo_config"]["loss_type"] == "dapo"


def test_bench_loop_vs_trl_over_seeds_gives_each_seed_its_own_base_on_both_sides(tmp_path, base_cache):
    """--seeds 2: TRL trains from each seed's own base model, so both sides' step-0 evaluations
    agree seed by seed; the output gives both sides' spread over the seeds."""
    pytest.importorskip("trl")
    record = tmp_path / "loop.jsonl"
    over = [*SHORT, f"base.cache_dir={base_cache}", "train.eval_every=3", "rollout.max_new_tokens=16"]
    out = chord(
        "bench", "loop", DEMO, *over, "--steps", "3", "--runs", "1", "--seeds", "2", "--record", record, "--vs-trl"
    )
    (r,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert r["run_seeds"] == [1234, 1235] and r["command"].endswith("--steps 3 --seeds 2 --vs-trl")
    chord_curves, trl_curves = r["eval_accuracy"], r["trl"]["eval_accuracy"]
    assert [chord_curves[i]["0"] for i in ("0", "1")] == [trl_curves[i]["0"] for i in ("0", "1")]
    assert "held-out accuracy at the last step over 2 seeds: chord " in out.stdout
    # seed by seed, from the record's curves: which side ended higher
    finals = [(chord_curves[i]["3"], trl_curves[i]["3"]) for i in ("0", "1")]
    above, below = sum(c > t for c, t in finals), sum(c < t for c, t in finals)
    assert f"chord ends above TRL on {above}, below on {below}, level on {2 - above - below} of 2 seeds" in out.stdout
