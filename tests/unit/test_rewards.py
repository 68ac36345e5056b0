"""Reward registry and the process-pool runner: values, and failures that name function and sample.

The reward functions below live at module level so spawned workers can import them by name."""

import time

import pytest

from chord_megatron.rewards import RewardError, RewardRunner, get_reward, register_reward, registered_rewards
from chord_megatron.rewards.exact import exact_match, extract_answer


def length_reward(prompt, response, metadata):
    return float(len(response)) + metadata.get("bonus", 0.0)


def raising_reward(prompt, response, metadata):
    if "boom" in response:
        raise ValueError("cannot parse boom")
    return 1.0


def sleepy_reward(prompt, response, metadata):
    time.sleep(30 if response == "hang" else 0)
    return 0.5


def swallowing_sleepy_reward(prompt, response, metadata):
    try:  # user code that catches everything must still be stopped
        time.sleep(30 if response == "hang" else 0)
    except Exception:
        return 0.0
    return 0.5


def str_reward(prompt, response, metadata):
    return "1.0" if response == "s" else 1.0


def nan_reward(prompt, response, metadata):
    return float("nan") if response == "n" else (True if response == "b" else 2)


@pytest.mark.parametrize(
    "response,answer,expected",
    [
        ("so the answer is 42", 42, 1.0),
        ("first 3 then 4, finally \\boxed{7}", "7", 1.0),
        ("\\boxed{1,000}", 1000, 1.0),
        ("it is 2.50", "2.5", 1.0),
        ("12 apples and 13 pears", "12", 0.0),  # the LAST number counts
        ("no number here", "3", 0.0),
        ("-5", -5, 1.0),
    ],
)
def test_exact_match(response, answer, expected):
    assert exact_match("q", response, {"answer": answer}) == expected


def test_extract_answer_prefers_boxed():
    assert extract_answer("2 + 2 = \\boxed{4}. Check: 5") == "4"


def test_registry():
    assert "exact_match" in registered_rewards() and get_reward("exact_match") is exact_match
    with pytest.raises(KeyError, match="unknown reward 'nope'.*exact_match"):
        get_reward("nope")
    register_reward("test_length")(length_reward)
    with pytest.raises(ValueError, match="already registered"):
        register_reward("test_length")(raising_reward)


def test_runner_scores_in_order_and_is_reusable():
    with RewardRunner(length_reward, num_workers=2, timeout_s=5) as run:
        assert run(["p"] * 4, ["a", "bb", "ccc", ""], [{}, {"bonus": 0.5}, {}, {}]) == [1.0, 2.5, 3.0, 0.0]
        assert run(["p"] * 7, ["a", "bb", "ccc", "", "x", "yy", "z"], [{}] * 7) == [1, 2, 3, 0, 1, 2, 1]  # 4 + 3
        assert run(["p"], ["xyz"], [{}]) == [3.0]


def test_runner_by_registered_name():
    with RewardRunner("exact_match", num_workers=1) as run:
        assert run(["q", "q"], ["42", "41"], [{"answer": 42}, {"answer": 42}]) == [1.0, 0.0]


def test_raising_reward_names_function_and_sample():
    with RewardRunner(raising_reward, num_workers=2, timeout_s=5) as run:
        with pytest.raises(
            RewardError, match=r"reward 'raising_reward' failed on sample 2: raised ValueError: cannot parse boom"
        ) as e:
            run(["p"] * 3, ["ok", "ok", "boom"], [{}] * 3)
        assert e.value.index == 2
        assert run(["p"], ["ok"], [{}]) == [1.0]  # the pool comes back after a failure
        # Samples travel to the workers in chunks (4 + 4 here): a failure in the second chunk
        # still names its index in the whole batch.
        with pytest.raises(RewardError, match=r"sample 6: raised ValueError") as e:
            run(["p"] * 8, ["ok"] * 6 + ["boom", "ok"], [{}] * 8)
        assert e.value.index == 6


@pytest.mark.parametrize("fn", [sleepy_reward, swallowing_sleepy_reward])
def test_hanging_reward_times_out_with_its_index(fn):
    with RewardRunner(fn, num_workers=2, timeout_s=0.5) as run:
        assert run(["p"], ["fine"], [{}]) == [0.5]  # workers started: time only the scoring
        t0 = time.monotonic()
        with pytest.raises(RewardError, match=rf"'{fn.__name__}' failed on sample 1: timed out after 0.5s"):
            run(["p"] * 3, ["fine", "hang", "fine"], [{}] * 3)
        assert time.monotonic() - t0 < 5.0  # not the 30 s sleep
        assert run(["p"], ["fine"], [{}]) == [0.5]


@pytest.mark.parametrize(
    "fn,response,needle",
    [
        (str_reward, "s", r"sample 0: returned '1.0' \(str\), expected a number"),
        (nan_reward, "n", r"sample 0: returned nan, expected a finite number"),
        (nan_reward, "b", r"sample 0: returned True \(bool\), expected a number"),
    ],
)
def test_non_numbers_are_refused(fn, response, needle):
    with RewardRunner(fn, num_workers=1, timeout_s=5) as run:
        with pytest.raises(RewardError, match=needle):
            run(["p"], [response], [{}])


def test_ints_are_accepted_as_floats():
    with RewardRunner(nan_reward, num_workers=1, timeout_s=5) as run:
        assert run(["p"], ["x"], [{}]) == [2.0]


def test_missing_answer_is_reported():
    with RewardRunner("exact_match", num_workers=1) as run:
        with pytest.raises(RewardError, match=r"sample 0: raised KeyError"):
            run(["q"], ["1"], [{}])


def test_length_mismatch():
    with pytest.raises(ValueError, match="differ in length"):
        RewardRunner(length_reward)(["a"], [], [])
