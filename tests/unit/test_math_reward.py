"""The "math" reward: math-verify's verdict on tricky answers, and the paper's format penalties."""

import pytest

from chord_megatron.rewards.math_answer import CORRECT, OVERLONG, WRONG_BOXED, WRONG_UNBOXED, last_boxed, math_reward

pytest.importorskip("math_verify")

# (reference answer, response, expected reward)
TABLE = [
    # fractions and decimals
    ("\\frac{1}{2}", "so the answer is \\boxed{0.5}", CORRECT),
    ("1/3", "\\boxed{\\frac13}", CORRECT),
    ("0.25", "Hence $\\boxed{\\dfrac{1}{4}}$.", CORRECT),
    ("\\frac{3}{4}", "\\boxed{\\tfrac{3}{4}}", CORRECT),
    ("\\frac{3}{4}", "\\boxed{\\frac{4}{3}}", WRONG_BOXED),
    # LaTeX forms
    ("\\dfrac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt3}{2}}", CORRECT),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", CORRECT),
    ("2\\pi", "The circumference is \\boxed{2 \\pi}", CORRECT),
    ("x^2+1", "\\boxed{1 + x^{2}}", CORRECT),
    ("(1,2)", "the point \\boxed{(1, 2)}", CORRECT),
    ("x=2", "\\boxed{2}", CORRECT),
    # numbers with separators, signs, units, percent, degrees, dollars
    ("1000", "\\boxed{1,000}", CORRECT),
    ("-3", "\\boxed{-3}", CORRECT),
    ("3", "\\boxed{-3}", WRONG_BOXED),
    ("12", "\\boxed{12 \\text{ cm}}", CORRECT),
    ("12", "\\boxed{12\\,\\mathrm{cm}}", CORRECT),
    ("100", "\\boxed{100\\%}", CORRECT),
    ("45", "\\boxed{45^\\circ}", CORRECT),
    ("10", "It costs \\boxed{\\$10}.", CORRECT),
    # unboxed answers: correct counts, a wrong one is badly formatted
    ("10", "The final answer is 10", CORRECT),
    ("12", "so the length is $12$ cm", CORRECT),
    ("5", "I think it is 6", WRONG_UNBOXED),
    ("5", "no idea", WRONG_UNBOXED),
    # the last box counts (R1 traces box guesses inside their thinking)
    ("7", "<think>maybe \\boxed{3}? no</think> so \\boxed{7}", CORRECT),
    ("3", "<think>maybe \\boxed{3}? no</think> so \\boxed{7}", WRONG_BOXED),
    ("5", "\\boxed{}", WRONG_UNBOXED),  # an empty box is no answer
]


@pytest.mark.parametrize("gold,response,expected", TABLE)
def test_reward_table(gold, response, expected):
    assert math_reward("", response, {"answer": gold}) == expected


@pytest.mark.parametrize("gold,response,expected", TABLE)
def test_correctness_is_math_verify_verdict(gold, response, expected):
    from math_verify import parse, verify

    verdict = bool(verify(parse(f"${gold}$"), parse(response)))
    assert (math_reward("", response, {"answer": gold}) == CORRECT) == verdict


@pytest.mark.parametrize(
    "response,meta,expected",
    [
        ("the answer might be 42 but let me check again wait", {"finish_reason": "length"}, OVERLONG),
        ("so it is \\boxed{42", {"finish_reason": "length"}, OVERLONG),  # the box never closed
        ("it is 42 but", {"truncated": True}, OVERLONG),
        ("\\boxed{42} hmm, double-check", {"finish_reason": "length"}, CORRECT),  # boxed before the cut
        ("\\boxed{41} hmm, double-check", {"finish_reason": "length"}, WRONG_BOXED),
        ("it is 41", {"finish_reason": "stop"}, WRONG_UNBOXED),
    ],
)
def test_overlong_without_an_answer(response, meta, expected):
    assert math_reward("", response, {"answer": "42", **meta}) == expected


def test_last_boxed_balances_braces():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed("\\fbox{x}") == "x"
    assert last_boxed("\\boxed{\\frac{1}{2}") is None
    assert last_boxed("nothing") is None


def test_needs_a_reference_answer():
    with pytest.raises(KeyError, match="answer"):
        math_reward("", "\\boxed{1}", {})


def test_registered_and_runs_in_reward_workers():
    """Registered as "math" and scored in a spawned worker, under the runner's own timeout (which
    shares SIGALRM with math-verify's)."""
    from chord_megatron.rewards import RewardRunner, registered_rewards

    assert {"math", "tool_call"} <= set(registered_rewards())
    with RewardRunner("math", num_workers=1, timeout_s=20) as run:
        got = run(["p"] * 3, ["\\boxed{\\frac{2}{4}}", "\\boxed{3}", "3?"], [{"answer": "0.5"}] * 3)
    assert got == [CORRECT, WRONG_BOXED, WRONG_UNBOXED]
