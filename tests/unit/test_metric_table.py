"""metrics/table.py: one table from which the engine's reduction, the logged names, the drop of
RL-only / expert-only token-means and the report's curves all derive."""

import pytest

from chord_megatron.metrics import table


def test_an_unknown_metric_raises_instead_of_vanishing():
    with pytest.raises(KeyError, match="not_a_metric"):
        table.logged({"loss": 1.0, "rl_tokens": 3.0, "sft_tokens": 2.0, "not_a_metric": 0.5})


def test_token_means_of_an_absent_row_kind_are_dropped():
    step = {
        "loss": 1.0,
        "grpo_loss": 0.4,
        "sft_loss": 0.6,
        "rl_tokens": 0.0,
        "sft_tokens": 5.0,
        "clip_frac": 0.0,
        "entropy_rl": 0.0,
        "sft_nll": 2.0,
        "entropy_sft": 1.5,
        "mu": 1.0,
        "update_successful": 1.0,
    }
    got = table.logged(step)
    assert "loss/grpo" not in got and "clip/frac" not in got and "entropy/rl" not in got
    assert got["loss/sft"] == 0.6 and got["entropy/expert"] == 1.5 and got["tokens/rl"] == 0.0
    assert got["train/update_successful"] == 1.0  # an engine metric the old renaming silently dropped
    rl_only = table.logged({**step, "rl_tokens": 4.0, "sft_tokens": 0.0})
    assert "loss/sft" not in rl_only and "sft/nll" not in rl_only and rl_only["loss/grpo"] == 0.4


def test_every_chord_loss_metric_has_a_reduction():
    from chord_megatron.train.metrics import metric_keys

    keys = metric_keys({"tis_cap": 2.0, "dual_clip": 3.0})
    assert keys and all(table.ENGINE[k].reduction in (table.SUM, table.RL_MEAN, table.EXPERT_MEAN) for k in keys)


def test_the_report_plots_the_tables_curves():
    from chord_megatron.metrics import report

    assert report.CURVES is table.CURVES
    assert [k for k, _ in table.CURVES] == [
        "eval/accuracy",
        "reward/mean",
        "entropy/rl",
        "entropy/expert",
        "response/length",
        "mu",
    ]
    logged = [m.logged for m in table.METRICS]
    assert len(logged) == len(set(logged)), "two metrics logged under one name"
