"""The base stage's stop rule (demo/plateau.py) and its held-out score (base_model.exact_answer_prob)."""

import json
import math

import pytest
import torch

from chord_megatron.config import ConfigError, load_config
from chord_megatron.demo.arith import make_splits
from chord_megatron.demo.plateau import Plateau


def test_plateau_stops_after_patience_evaluations_without_enough_gain():
    rule = Plateau(patience=2, min_delta=0.01)
    scores = [0.10, 0.30, 0.305, 0.40, 0.405, 0.409]
    stops = [rule.update(100 * (i + 1), s) for i, s in enumerate(scores)]
    # 0.305 is under 0.30 + 0.01 (stale 1); 0.40 resets; 0.405, 0.409 are stale 1, 2 -> stop
    assert stops == [False, False, False, False, False, True]
    assert rule.best == 0.409 and rule.history[-1] == (600, 0.409)


def test_small_gains_do_not_add_up_to_a_reset():
    """Gains are measured against the best so far, so a slow creep still counts as a plateau."""
    rule = Plateau(patience=3, min_delta=0.01)
    assert [rule.update(i, 0.5 + 0.004 * i) for i in range(4)] == [False, False, False, True]


def test_a_target_stops_at_the_first_score_that_reaches_it():
    rule = Plateau(patience=5, min_delta=0.01, target=0.2)
    assert [rule.update(i, s) for i, s in enumerate([0.05, 0.19, 0.2, 0.6])][:3] == [False, False, True]
    assert rule.reason == "target"
    plain = Plateau(patience=1, min_delta=0.5)
    assert [plain.update(i, s) for i, s in enumerate([0.9, 0.95])] == [False, True] and plain.reason == "plateau"


def test_validation_problems_leave_the_other_splits_as_they_were():
    before = make_splits(2, 300, 200, 100, seed=3)
    after = make_splits(2, 300, 200, 100, seed=3, n_val=150)
    assert all(before[k] == after[k] for k in ("eval", "rl", "expert"))
    assert len(after["val"]) == 150 and before["val"] == []
    pairs = [{(p.a, p.b) for p in after[k]} for k in ("eval", "rl", "expert", "val")]
    assert sum(map(len, pairs)) == len(set().union(*pairs))  # disjoint


class _FakeEngine:
    def __init__(self, logp):
        self.logp = logp

    def compute_logprobs(self, batch):
        return self.logp


def test_exact_answer_prob_is_the_mean_probability_of_the_whole_answer():
    from types import SimpleNamespace

    from chord_megatron.demo.base_model import exact_answer_prob

    logp = torch.tensor([[math.log(0.5), math.log(0.8), float("nan")], [math.log(0.9), -float("inf"), 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # padding holds nan / -inf: ignored
    got = exact_answer_prob(_FakeEngine(logp), SimpleNamespace(loss_mask=mask))
    assert got == pytest.approx((0.5 * 0.8 + 0.9) / 2, rel=1e-6)


def test_the_rule_stops_the_stage_and_logs_it(tmp_path):
    from chord_megatron.demo.base_model import read_stage_log, train_base

    cfg = load_config(
        "configs/demo.yaml",
        [
            "base.steps=40",
            "base.eval_every=5",
            "base.patience=2",
            "base.min_delta=1.0",  # no evaluation can gain 1.0: the 2nd and 3rd are stale
            "base.problems=500",
            "base.batch_rows=8",
            "base.val_problems=16",
            f"base.cache_dir={tmp_path}",
        ],
    )
    weights = train_base(cfg)
    log = read_stage_log(cfg)
    assert log["steps_run"] == 15 and log["stopped"] == "plateau"
    assert [s for s, _ in log["val_exact_prob"]] == [5, 10, 15]
    assert all(0.0 < p < 1.0 for _, p in log["val_exact_prob"])
    assert json.loads((tmp_path / next(p.name for p in tmp_path.glob("*.json"))).read_text()) == log
    assert "embedding.word_embeddings.weight" in weights


def test_bad_rule_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"base.min_delta.*>= 0"):
        load_config(None, ["base.min_delta=-0.1"])
    with pytest.raises(ConfigError, match=r"base.target.*\[0, 1\)"):
        load_config(None, ["base.target=1.5"])
    with pytest.raises(ConfigError, match=r"base.patience.*>= 1"):
        load_config(None, ["base.patience=0"])


def test_a_reached_target_stops_the_stage_at_that_evaluation(tmp_path):
    from chord_megatron.demo.base_model import read_stage_log, train_base

    small = ["base.problems=500", "base.batch_rows=8", "base.val_problems=16", f"base.cache_dir={tmp_path}"]
    cfg = load_config("configs/demo.yaml", ["base.steps=40", "base.eval_every=5", "base.target=1e-9", *small])
    train_base(cfg)
    log = read_stage_log(cfg)
    assert log["steps_run"] == 5 and log["stopped"] == "target" and len(log["val_exact_prob"]) == 1
