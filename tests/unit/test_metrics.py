"""Metrics: JSONL records, TensorBoard scalars, and truncation on resume."""

import torch

from chord_megatron.metrics.logger import MetricsLogger, read_metrics


def test_jsonl_and_tensorboard(tmp_path):
    log = MetricsLogger(tmp_path)
    for step in range(3):
        log.log(step, {"reward": torch.tensor(0.5 * step), "mu": 0.1, "note": "x"})
    log.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["reward"] for r in records] == [0.0, 0.5, 1.0] and records[1]["note"] == "x"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("reward")] == [0.0, 0.5, 1.0]


def test_resume_drops_steps_past_the_checkpoint(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for step in range(5):
        log.log(step, {"x": step})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "x"')  # torn line from a crash
    log = MetricsLogger(tmp_path, tensorboard=False, resume_step=3)
    log.log(3, {"x": 30})
    log.close()
    assert [(r["step"], r["x"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(0, 0), (1, 1), (2, 2), (3, 30)]
