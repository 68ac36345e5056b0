"""`bench_train_step` (behind `chord bench train-step`) on a tiny config, in a world of one."""
import pytest

from dist_harness import run_job

pytestmark = pytest.mark.dist

OVERRIDES = [
    "model.max_seq_length=32", "data.max_prompt_tokens=8", "data.max_response_tokens=8",
    "rollout.max_new_tokens=16", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=4",
    "algorithm.expert_data_ratio=0.2", "train.micro_batch_size=4",
]  # fmt: skip


def bench_job():
    from chord_megatron.config import load_config
    from chord_megatron.train.bench import bench_train_step

    return bench_train_step(load_config(None, OVERRIDES), steps=2)


def test_bench_train_step_reports_throughput_and_memory():
    r = run_job(bench_job, world=1)[0]
    assert (r["rows"], r["seq_length"]) == (8 + 2, 8 + 16)  # 2 x 4 on-policy + 0.2 / 0.8 x 8 expert rows
    assert r["tokens_per_step"] == 10 * 24
    assert len(r["step_times_s"]) == 2 and r["step_time_s"] == pytest.approx(sum(r["step_times_s"]) / 2)
    assert r["tokens_per_s"] == pytest.approx(240 / r["step_time_s"])
    assert 0 < r["trained_tokens_per_s"] < r["tokens_per_s"]
    assert r["memory_kind"] == "cpu_peak_rss" and 50 < r["peak_memory_mb"] < 24 * 1024
    assert r["layout"] == {"world": 1, "tp": 1, "pp": 1, "vpp": None, "dp": 1}
    assert (r["device"], r["dtype"]) == ("cpu", "float32")
