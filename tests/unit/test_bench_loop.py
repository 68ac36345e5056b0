"""`chord bench loop`: steps/s between the first and the last step record, the phases' means
after the warm-up step, the rest of the interval as 'other', and a results record with the
machine and commit."""

import json
import statistics

import pytest

from chord_megatron.commands.bench_loop import OTHER, PHASES, phase_seconds, summarize
from tests.support.chord_cli import SHORT, chord


def _records(clock, **phases):
    """Step records at the given clock readings; each phase metric takes the given list."""
    out = [{"step": -1, "eval/accuracy": 0.25}]  # an evaluation record carries no clock
    for i, c in enumerate(clock):
        out.append({"step": i, "clock/seconds": c, **{k: v[i] for k, v in phases.items()}})
    return out


def test_phases_and_steps_per_second_from_the_records():
    gen, upd = [9.0, 0.2, 0.4, 0.3], [5.0, 0.1, 0.1, 0.1]  # the first step is a slow warm-up
    records = _records([1.0, 2.0, 3.0, 4.0], **{"rollout/seconds": gen, "update/seconds": upd})
    got = phase_seconds(records)
    assert got["steps_per_s"] == pytest.approx(1.0)  # 3 intervals in 3 seconds
    assert got["generate"] == pytest.approx(0.3) and got["forward/backward + optimizer"] == pytest.approx(0.1)
    assert got["reward"] == 0.0  # a phase a run did not time
    assert got[OTHER] == pytest.approx(1.0 - 0.3 - 0.1)
    assert set(got) == {name for name, _ in PHASES} | {OTHER, "steps_per_s"}
    with pytest.raises(ValueError, match="at least 3 steps"):
        phase_seconds(records[:3])


def test_asynchronous_generation_is_not_counted_twice():
    gen, wait, upd = [0.5] * 4, [0.0, 0.05, 0.05, 0.05], [0.6] * 4
    records = _records(
        [0.0, 0.8, 1.6, 2.4], **{"rollout/seconds": gen, "rollout/wait_seconds": wait, "update/seconds": upd}
    )
    got = phase_seconds(records)
    assert got["generate"] == pytest.approx(0.5)  # reported, but it ran during the update
    assert got[OTHER] == pytest.approx(0.8 - 0.6 - 0.05)


def test_medians_over_runs():
    runs = [_records([0.0, c, 2 * c], **{"rollout/seconds": [0.0, c / 2, c / 2]}) for c in (1.0, 2.0, 4.0)]
    s = summarize(runs)
    assert s["steps_per_s"] == pytest.approx(0.5) and s["phase_seconds"]["generate"] == pytest.approx(1.0)
    assert s["steps_per_s_runs"] == pytest.approx([1.0, 0.5, 0.25])
    assert s["eval_accuracy"][0] == {-1: 0.25}


def test_chord_bench_loop_runs_the_real_loop_and_records_the_result(tmp_path):
    record = tmp_path / "loop.jsonl"
    over = [*SHORT, f"base.cache_dir={tmp_path / 'base'}", "train.eval_every=0"]
    out = chord("bench", "loop", "configs/demo.yaml", *over, "--steps", "4", "--runs", "1", "--record", record)
    assert "steps/s:" in out.stdout and "forward/backward + optimizer" in out.stdout, out.stdout
    (r,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert r["runs"] == 1 and r["steps_per_s"] > 0 and r["commit"] and r["cpu"] and r["torch_threads"] >= 1
    assert r["phase_seconds"]["generate"] > 0 and r["phase_seconds"]["forward/backward + optimizer"] > 0
    assert r["phase_seconds"]["old log-probs pass"] < 1e-3  # no separate pass by default


def test_seeds_run_each_seed_with_its_own_base_and_say_the_spread(tmp_path):
    """--seeds 2: each run of the loop at train.seed and train.seed + 1 (each its own base
    model, both cached), the record naming each run's seed, the output the spread over them."""
    record = tmp_path / "loop.jsonl"
    over = [*SHORT, f"base.cache_dir={tmp_path / 'base'}", "train.eval_every=2"]
    out = chord(
        "bench", "loop", "configs/demo.yaml", *over, "--steps", "4", "--runs", "1", "--seeds", "2", "--record", record
    )
    (r,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert r["run_seeds"] == [1234, 1235] and r["runs"] == 2 and r["command"].endswith("--steps 4 --seeds 2")
    assert len(list((tmp_path / "base").glob("base-*.pt"))) == 2
    finals = [acc[max(acc, key=int)] for acc in r["eval_accuracy"].values()]
    assert f"held-out accuracy at the last step over 2 seeds: chord {statistics.mean(finals):.3f} ± " in out.stdout
