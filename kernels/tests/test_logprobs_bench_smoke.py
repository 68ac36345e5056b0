"""Smoke test of the benchmark script: a tiny shape, a few variants, rows land in a CSV."""
import csv
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "bench_logprobs.py")


@pytest.mark.slow  # 7-20 s: one subprocess (torch import) per variant
def test_bench_quick_writes_csv(tmp_path):
    out = tmp_path / "results.csv"
    proc = subprocess.run(
        [sys.executable, BENCH, "--quick", "--threads", "1", "--passes", "fwd+bwd", "--reps", "2",
         "--variants", "naive,chunked_inplace", "--csv", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
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
