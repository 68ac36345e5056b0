"""The example reward, registered as "exact_match": the final answer against metadata["answer"]."""

from __future__ import annotations

import re
from typing import Any, Dict, Optional

from .registry import register_reward

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_answer(response: str) -> Optional[str]:
    """The last \\boxed{...} content, else the last number in the response, else None."""
    boxed = _BOXED.findall(response)
    if boxed:
        return boxed[-1].strip()
    numbers_ = _NUMBER.findall(response)
    return numbers_[-1] if numbers_ else None


def _normalise(answer: str) -> str:
    text = answer.strip().replace(",", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text
    return repr(int(value)) if value.is_integer() else repr(value)


@register_reward("exact_match")
def exact_match(prompt: str, response: str, metadata: Dict[str, Any]) -> float:
    """1.0 when the response's final answer equals metadata["answer"] (numbers compared by
    value: "1,000" == "1000.0"), else 0.0."""
    if "answer" not in metadata:
        raise KeyError("exact_match needs metadata['answer']")
    got = extract_answer(response)
    return float(got is not None and _normalise(got) == _normalise(str(metadata["answer"])))
