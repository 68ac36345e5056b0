"""The imperfect expert (data.expert_error_rate) and the base stage's taste of its style
(base.expert_style_frac), checked against arithmetic done independently."""

import json
import math
import random
from types import SimpleNamespace

import pytest
import torch

from chord_megatron.config import ConfigError, load_config
from chord_megatron.demo.arith import Problem, arith_reward, make_splits, styled_rows, wrong_expert_rows


def _first_carry_column(a: int, b: int) -> int | None:
    """The column (0 = units) that receives the first carry, by plain column arithmetic; a carry
    out of the top column is written as the answer's first digit, not into a column."""
    carry = 0
    for i in range(max(len(str(a)), len(str(b)))):
        da, db = (a // 10**i) % 10, (b // 10**i) % 10
        if carry:
            return i
        carry = (da + db + carry) // 10
    return None


def test_a_forgotten_carry_costs_exactly_ten_to_its_column():
    assert Problem(37, 48).expert(drop_carry=True) == "7+8+0=15,3+4+0=07|75"
    rng = random.Random(0)
    for _ in range(500):
        p = Problem(rng.randint(100, 999), rng.randint(100, 999))
        wrong = p.expert(drop_carry=True)
        col = _first_carry_column(p.a, p.b)
        value = int(wrong.rsplit("|", 1)[1])
        if col is None:
            assert wrong == p.expert() and not p.has_carry
        else:
            assert value == p.a + p.b - 10**col and p.has_carry
            assert arith_reward(p.prompt, wrong, {"answer": p.answer}) == 0.0  # well formed, wrong
        assert arith_reward(p.prompt, p.expert(), {"answer": p.answer}) == 1.0


def test_the_error_rate_is_the_exact_share_of_wrong_rows(tmp_path):
    from chord_megatron.data.task import write_arith_files

    cfg = load_config(
        "configs/demo.yaml",
        [
            "data.arith_digits=3",
            "data.arith_expert_rows=400",
            "data.expert_error_rate=0.25",
            "data.arith_rl_prompts=100",
        ],
    )
    paths = write_arith_files(cfg, tmp_path)
    rows = [json.loads(line) for line in paths["expert"].read_text().splitlines()]
    wrong = 0
    for r in rows:
        a, b = map(int, r["prompt"].rstrip("=").split("+"))
        wrong += arith_reward(r["prompt"], r["response"], {"answer": a + b}) == 0.0
    assert len(rows) == 400 and wrong == 100
    splits = make_splits(3, 100, 400, cfg.data.arith_eval_prompts, cfg.data.seed)
    assert wrong_expert_rows(splits["expert"], 0.25, cfg.data.seed) == wrong_expert_rows(
        splits["expert"], 0.25, cfg.data.seed
    )  # seeded: every run and variant gets the same wrong rows


def test_too_few_carries_for_the_rate_is_refused():
    no_carry = [Problem(11, 22)] * 10
    with pytest.raises(ValueError, match="needs 5 problems with a carry, there are 0"):
        wrong_expert_rows(no_carry, 0.5, 0)


def test_styled_rows_are_the_asked_share():
    assert len(styled_rows(1000, 0.05, 1)) == 50 and styled_rows(1000, 0.0, 1) == set()


def test_the_base_score_adds_the_two_correct_forms():
    from chord_megatron.demo.base_model import exact_answer_prob

    # two problems: direct forms first, then the scratchpads of the same problems
    logp = torch.log(torch.tensor([[0.5], [0.2], [0.3], [0.1]]))
    engine = SimpleNamespace(compute_logprobs=lambda batch: logp)
    got = exact_answer_prob(engine, SimpleNamespace(loss_mask=torch.ones(4, 1)), forms=2)
    assert got == pytest.approx(((0.5 + 0.3) + (0.2 + 0.1)) / 2)
    assert math.isclose(exact_answer_prob(engine, SimpleNamespace(loss_mask=torch.ones(4, 1))), 0.275, rel_tol=1e-6)


def test_rates_out_of_range_are_one_line_errors():
    for key in ("data.expert_error_rate", "base.expert_style_frac"):
        with pytest.raises(ConfigError, match=rf"{key}.*\[0, 1\)"):
            load_config(None, [f"{key}=1.0"])
