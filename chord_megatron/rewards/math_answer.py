"""The paper's math reward, registered as "math": correctness by math-verify, plus format penalties.

    +1.0  the final answer is correct (math-verify: the last \\boxed{} answer, or the answer
          math-verify finds in unboxed text, equals metadata["answer"] symbolically: 1/2 = 0.5 =
          \\frac{1}{2}, 1,000 = 1000, units and \\text{} dropped)
     0.0  wrong, but well formatted: the response puts an answer in \\boxed{}
    -0.1  wrong and badly formatted: no \\boxed{} answer
    -1.0  overlong without an answer: cut by the length limit (metadata["finish_reason"] ==
          "length", or metadata["truncated"] true) before writing a \\boxed{} answer

An overlong response that did box an answer is scored like any other (its answer counts).
The reward decides the overlong case itself when the caller passes the finish reason; it says so
with the function attribute `handles_finish_reason` (read by rewards/scoring.score, which then does not
override it).

math-verify bounds its own parsing with SIGALRM; inside a RewardRunner worker, whose timeout uses
the same timer, its timeouts are switched off so that the runner's stays in charge.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Dict, Optional

from .registry import register_reward

CORRECT, WRONG_BOXED, WRONG_UNBOXED, OVERLONG = 1.0, 0.0, -0.1, -1.0


def last_boxed(text: str) -> Optional[str]:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if there is none
    or it is not closed (e.g. cut off by the length limit)."""
    best = None
    for macro in ("\\boxed", "\\fbox"):
        i = text.rfind(macro)
        if i >= 0 and (best is None or i > best[0]):
            best = (i, macro)
    if best is None:
        return None
    i = best[0] + len(best[1])
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth, start = 0, i
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : j]
    return None


class _KnownTimeoutOff(logging.Filter):
    """math-verify warns once per process when its timeouts are off; here that is deliberate."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_KnownTimeoutOff())


def _timeouts() -> Optional[int]:
    """math-verify's own timeout in seconds, or None when it must not touch SIGALRM: outside the
    main thread (signals are main-thread only), or while a timer of a caller (RewardRunner) runs."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        return None
    return 5


def _gold(answer: str):
    from math_verify import parse

    t = _timeouts()
    text = answer.strip()
    if "\\boxed" not in text and not text.startswith("$"):
        text = f"${text}$"  # read the reference as LaTeX: \frac{1}{2}, 2\sqrt{2}, 12
    return parse(text, parsing_timeout=t)


def is_correct(response: str, answer: str) -> bool:
    """math-verify's verdict: the response's answer equals the reference `answer`."""
    from math_verify import parse, verify

    t = _timeouts()
    gold = _gold(str(answer))
    if not gold:
        raise ValueError(f"math reward: math-verify cannot read the reference answer {answer!r}")
    pred = parse(response, parsing_timeout=t)
    return bool(pred) and bool(verify(gold, pred, timeout_seconds=t))


def overlong(metadata: Dict[str, Any]) -> bool:
    return metadata.get("finish_reason") == "length" or bool(metadata.get("truncated", False))


@register_reward("math")
def math_reward(prompt: str, response: str, metadata: Dict[str, Any]) -> float:
    """The paper's scheme (module docstring); metadata["answer"] is the reference answer."""
    if "answer" not in metadata:
        raise KeyError("the math reward needs metadata['answer']")
    boxed = last_boxed(response)
    if boxed is None and overlong(metadata):
        return OVERLONG
    if is_correct(response, str(metadata["answer"])):
        return CORRECT
    return WRONG_BOXED if boxed is not None and boxed.strip() else WRONG_UNBOXED


math_reward.handles_finish_reason = True
