"""Comparison table and curves from metrics records."""

import math

from chord_megatron.metrics.report import comparison_table, last, plot_curves


def runs():
    a = [{"step": s, "reward/mean": s / 10, "entropy/rl": 1.0 - s / 20, "tokens/rl": 8} for s in range(5)]
    a.append({"step": 4, "entropy/rl": 0.0, "tokens/rl": 0})  # a step without on-policy rows
    a.append({"step": 4, "eval/accuracy": 0.6, "eval/response_length": 12.0})
    b = [{"step": s, "reward/mean": 0.1} for s in range(5)] + [{"step": 4, "eval/accuracy": 0.3}]
    return {"chord-phi": a, "grpo": b}


def test_table_reports_final_values_and_delta():
    table = comparison_table(runs(), base_accuracy=0.25).splitlines()
    assert table[2] == "| chord-phi | 0.600 | +0.350 | 12.0 | 0.800 | — |"
    assert table[3] == "| grpo | 0.300 | +0.050 | — | — | — |"
    assert math.isnan(last([], "x"))


def test_plot_writes_a_png(tmp_path):
    out = plot_curves(runs(), tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
