"""The toy task: expert scratchpads are correct arithmetic, splits are disjoint, rewards score."""

import random

import pytest

from chord_megatron.data.tokenizer import CharTokenizer
from chord_megatron.demo.arith import Problem, arith_reward, make_splits, parse_answer, pretrain_problems


def check_scratchpad(p: Problem):
    steps, answer = p.expert().split("|")
    digits, carry = [], 0
    xs, ys = str(p.a)[::-1], str(p.b)[::-1]
    for i, step in enumerate(steps.split(",")):
        lhs, s = step.split("=")
        x, y, c = map(int, lhs.split("+"))
        assert (x, y, c) == (int(xs[i]) if i < len(xs) else 0, int(ys[i]) if i < len(ys) else 0, carry)
        assert int(s) == x + y + c and len(s) == 2
        digits.append(int(s) % 10)
        carry = int(s) // 10
    value = int("".join(map(str, ([carry] if carry else []) + digits[::-1])))
    assert value == p.answer == int(answer)


def test_scratchpads_are_correct():
    rng = random.Random(0)
    for _ in range(300):
        check_scratchpad(Problem(rng.randint(1, 9999), rng.randint(1, 999)))
    assert Problem(37, 48).expert() == "7+8+0=15,3+4+1=08|85"


def test_splits_are_disjoint_and_reproducible():
    s = make_splits(2, 300, 200, 100, seed=3)
    keys = {k: {(p.a, p.b) for p in v} for k, v in s.items()}
    assert len(keys["eval"] | keys["rl"] | keys["expert"]) == 600
    assert s == make_splits(2, 300, 200, 100, seed=3)
    pre = pretrain_problems(2, 2000, seed=3, exclude=s["eval"])
    assert not {(p.a, p.b) for p in pre} & keys["eval"]
    with pytest.raises(ValueError, match="space"):
        make_splits(1, 50, 0, 0, seed=0)


def test_reward_scheme():
    meta = {"answer": 85}
    assert arith_reward("37+48=", "85", meta) == 1.0
    assert arith_reward("37+48=", "7+8+0=15,3+4+1=08|85", meta) == 1.0
    assert arith_reward("37+48=", "84", meta) == 0.0
    assert arith_reward("37+48=", "7+8=15|8x5", meta) == -0.1
    assert arith_reward("37+48=", "", meta) == -0.1
    assert parse_answer(" 12 ") == (True, 12)


def test_every_task_string_tokenizes():
    tok = CharTokenizer()
    p = Problem(987, 65)
    for text in (p.prompt, p.direct(), p.expert()):
        assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size <= 64
