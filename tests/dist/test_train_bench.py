"""`bench_train_step` (behind `chord bench train-step`) on a tiny config, in a world of one."""

import pytest

from tests.support.dist_harness import run_job

pytestmark = pytest.mark.dist

OVERRIDES = [
    "model.max_seq_length=32",
    "data.max_prompt_tokens=8",
    "data.max_response_tokens=8",
    "rollout.max_new_tokens=16",
    "rollout.prompts_per_step=2",
    "rollout.samples_per_prompt=4",
    "algorithm.expert_data_ratio=0.2",
    "train.micro_batch_size=4",
]


def bench_job(*extra):
    from chord_megatron.commands.bench import bench_train_step
    from chord_megatron.config import load_config

    return bench_train_step(load_config(None, OVERRIDES + list(extra)), steps=2)


def test_bench_train_step_reports_throughput_and_memory():
    r = run_job(bench_job, world=1)[0]
    assert (r["rows"], r["seq_length"]) == (8 + 2, 8 + 16)  # 2 x 4 on-policy + 0.2 / 0.8 x 8 expert rows
    assert r["tokens_per_step"] == 10 * 24
    assert len(r["step_times_s"]) == 2 and r["step_time_s"] == pytest.approx(sum(r["step_times_s"]) / 2)
    assert r["tokens_per_s"] == pytest.approx(240 / r["step_time_s"])
    assert 0 < r["trained_tokens_per_s"] < r["tokens_per_s"]
    assert r["memory_kind"] == "cpu_peak_rss" and 50 < r["peak_memory_mb"] < 24 * 1024
    assert r["layout"] == {"world": 1, "tp": 1, "pp": 1, "vpp": None, "cp": 1, "dp": 1}
    assert (r["device"], r["dtype"]) == ("cpu", "float32")
    assert (r["packed"], r["micro_batches"]) == (False, 3)  # 10 rows, 4 per micro-batch


def test_bench_batch_has_ragged_responses_that_packing_fits_into_fewer_rows():
    from chord_megatron.commands.bench import random_batch
    from chord_megatron.config import load_config

    lengths = random_batch(load_config(None, OVERRIDES)).loss_mask.sum(1)
    assert lengths.min() >= 4 and lengths.max() <= 16 and len(set(lengths.tolist())) > 3
    r = run_job(bench_job, world=1, args=("train.pack_sequences=true", "train.micro_batch_size=1"))[0]
    assert r["packed"] and r["micro_batches"] < 10 and r["tokens_per_step"] == 240


def test_chord_bench_vs_prints_both_runs_and_their_ratios(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "tiny.yaml"
    config.write_text("train:\n  seed: 3\n")
    cmd = [
        sys.executable,
        "-m",
        "chord_megatron.cli",
        "bench",
        "train-step",
        str(config),
        *OVERRIDES,
        "--steps",
        "1",
        "--vs",
        "train.pack_sequences=true",
        "train.micro_batch_size=1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "--- baseline" in text and "--- variant: train.pack_sequences=true train.micro_batch_size=1" in text
    values = {}
    for part in text.split("--- ")[1:]:
        head, *lines = part.strip().splitlines()
        values[head.split(":")[0]] = dict(line.split(None, 1) for line in lines)
    base, var, ratio = values["baseline"], values["variant"], values["variant / baseline"]
    assert (base["packed"], var["packed"]) == ("False", "True")
    # numbers come with 4 significant digits and their unit, never as raw 15-digit floats
    for result in (base, var):
        assert result["step_time_s"].endswith(" s") and result["peak_memory_mb"].endswith(" MiB")
        assert result["tokens_per_s"].endswith(" tokens/s")
        for key in ("step_time_s", "tokens_per_s", "trained_tokens_per_s", "peak_memory_mb"):
            digits = result[key].split()[0].replace(".", "").lstrip("0")
            assert len(digits.split("e")[0]) <= 4, (key, result[key])
    assert ratio["step_time"].endswith("x")
    step_time = {k: float(v["step_time_s"].removesuffix(" s")) for k, v in (("base", base), ("var", var))}
    assert float(ratio["step_time"].removesuffix("x")) == pytest.approx(step_time["var"] / step_time["base"], rel=2e-3)
    # each config ran twice (baseline, variant, variant, baseline), 1 timed step each
    for result, mean in ((base, step_time["base"]), (var, step_time["var"])):
        times = [float(t) for t in result["step_times_s"].removesuffix(" s").split(", ")]
        assert len(times) == 2 and mean == pytest.approx(sum(times) / 2, rel=2e-3)
    assert "peak_memory" not in ratio  # the CPU's peak RSS is per process, not per run
