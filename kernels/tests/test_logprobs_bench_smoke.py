"""Smoke tests of the benchmark script: a tiny shape, a few variants or launch configs, rows land in a CSV."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "bench_logprobs.py")


@pytest.mark.slow  # 7-20 s: one subprocess (torch import) per variant
def test_bench_quick_writes_csv(tmp_path):
    out = tmp_path / "results.csv"
    proc = subprocess.run(
        [
            sys.executable,
            BENCH,
            "--quick",
            "--threads",
            "1",
            "--passes",
            "fwd+bwd",
            "--reps",
            "2",
            "--variants",
            "naive,chunked_inplace",
            "--csv",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert [r["variant"] for r in rows] == ["naive", "chunked_inplace"], proc.stdout
    for r in rows:
        assert r["pass"] == "fwd+bwd" and r["n"] == "256" and r["v"] == "2048"
        assert 0 < float(r["p20_ms"]) <= float(r["p50_ms"]) <= float(r["p80_ms"])
        assert float(r["peak_extra_mb"]) >= 0
    # The naive path materialises several fp32 [N, V] tensors; the in-place chunked path none.
    naive, chunked = rows[0], rows[1]
    assert float(naive["peak_extra_x_logits"]) > 2.0
    assert float(chunked["peak_extra_x_logits"]) < 1.0


@pytest.mark.slow  # ~15 s: one worker per config and per baseline, kernels interpreted
def test_sweep_quick_under_interpreter(tmp_path):
    """--sweep --quick: 2 launch configs of the interpreted kernel, rows labelled by config,
    a fwd+bwd-sorted table, the default's ratio to the baselines, and the best config as JSON."""
    out = tmp_path / "sweep.csv"
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [
            sys.executable,
            BENCH,
            "--sweep",
            "--quick",
            "--threads",
            "1",
            "--reps",
            "2",
            "--budget-s",
            "240",
            "--csv",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    sweep_rows = [r for r in rows if r["variant"] == "triton_inplace"]
    notes = sorted({r["note"] for r in sweep_rows})
    assert notes == [
        "sweep: rows=32 block_v=1024 warps=1 stages=2 lanes=on",
        "sweep: rows=32 block_v=2048 warps=1 stages=1 lanes=off (default)",
    ], notes
    assert sorted(r["pass"] for r in sweep_rows) == sorted(["fwd", "bwd", "fwd+bwd"] * 2)
    assert {r["variant"] for r in rows} - {"triton_inplace"} >= {"naive"}
    for r in rows:
        assert 0 < float(r["p20_ms"]) <= float(r["p50_ms"]) <= float(r["p80_ms"])
    assert "vs naive (p50 ratio" in proc.stdout
    best = json.loads(proc.stdout.strip().splitlines()[-2])  # the line before "appended ..."
    fwd_bwd = {r["note"]: float(r["p50_ms"]) for r in sweep_rows if r["pass"] == "fwd+bwd"}
    assert best["p50_ms"]["fwd+bwd"] == min(fwd_bwd.values())
    assert best["check_vs_naive"]["ok"] and best["check_vs_naive"]["logp_abs"] < 1e-4, best
    assert "WRONG" not in proc.stdout


def test_sweep_correctness_check_catches_wrong_results():
    """The sweep's per-configuration check against naive passes the interpreted kernel at a
    small launch and fails a function whose results are off by a little."""
    sys.path.insert(0, os.path.dirname(BENCH))
    import bench_logprobs as bench

    x, t, g1, g2 = bench._make_inputs(bench.CHECK_ROWS, 1000, torch.bfloat16, "cpu")
    kernel = bench.VARIANTS["triton_inplace"].build(
        launch={"rows_per_program": 32, "block_v": 256, "num_warps": 1, "num_stages": 2, "lane_accumulators": True}
    )
    good = bench.check_vs_naive(kernel, x, t, g1, g2, 1.0)
    assert good["ok"] and good["logp_abs"] < 1e-4 and good["grad_rel"] < 2**-7, good

    naive = bench.VARIANTS["naive"].build()

    def off_by_a_little(x, t, temperature):
        logp, ent = naive(x, t, temperature)
        return logp, ent * 1.001

    bad = bench.check_vs_naive(off_by_a_little, x, t, g1, g2, 1.0)
    assert not bad["ok"] and bad["entropy_abs"] > 1e-3 and bad["logp_abs"] == 0, bad


def test_sweep_budget_spent_before_start(tmp_path):
    """A spent --budget-s starts no worker, says so, and exits cleanly with nothing to write."""
    out = tmp_path / "sweep.csv"
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, BENCH, "--sweep", "--quick", "--budget-s", "0", "--csv", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--budget-s of 0 s is spent" in proc.stdout
    assert "no configuration was measured with correct results" in proc.stdout
    assert not out.exists()
