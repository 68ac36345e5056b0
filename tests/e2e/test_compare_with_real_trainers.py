"""`chord compare --jobs 2` with real trainers: two at once, each writing its own train.log, each
seed's base model trained by exactly one of its runs, every run recorded."""

import pathlib

import pytest

from chord_megatron.metrics.results import read_results
from tests.support.chord_cli import DEMO, SHORT, chord

pytestmark = pytest.mark.slow


def test_two_jobs_train_each_base_once_and_record_every_run(tmp_path):
    results, bases = tmp_path / "r.jsonl", tmp_path / "bases"  # an empty base cache: both seeds train one
    over = [*SHORT, f"base.cache_dir={bases}", "train.steps=2", "train.eval_every=2"]
    out = chord(
        "compare",
        DEMO,
        *over,
        "--variants",
        "grpo,sft",
        "--seeds",
        "2",
        "--jobs",
        "2",
        "--record",
        results,
        "--out",
        tmp_path / "cmp",
    )
    records = read_results(results)
    assert sorted((r["variant"], r["seed"]) for r in records) == [
        ("grpo", 1234),
        ("grpo", 1235),
        ("sft", 1234),
        ("sft", 1235),
    ]
    logs = {(r["variant"], r["seed"]): (pathlib.Path(r["run_dir"]) / "train.log").read_text() for r in records}
    assert all("final evaluation:" in log for log in logs.values())  # each run's output went to its own log
    for seed in (1234, 1235):  # the trainer prints "base stage: ..." when it trains the base
        assert sum("base stage:" in logs[(v, seed)] for v in ("grpo", "sft")) == 1, seed
    assert len(list(bases.glob("base-*.pt"))) == 2
    assert out.stdout.count(": done in ") == 4 and "train.log" in out.stdout
