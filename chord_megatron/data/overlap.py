"""RL prompts that also appear in the expert (SFT) set.

CHORD's RL prompts and expert problems should be disjoint: a prompt whose expert answer is in
the SFT term is not a fair test of what RL learns. Prompts are compared after normalisation
(Unicode NFKC, case folded, runs of whitespace made one space, ends stripped), so formatting
differences do not hide a duplicate.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable, List, Sequence, Tuple, TypeVar

T = TypeVar("T")
_SPACE = re.compile(r"\s+")


def normalise_prompt(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def drop_overlap(
    prompts: Sequence[T], expert_prompts: Iterable[str], *, key=lambda p: p.raw_prompt
) -> Tuple[List[T], int]:
    """(prompts whose normalised text is not among the expert prompts', how many were dropped)."""
    seen = {normalise_prompt(t) for t in expert_prompts if t}
    kept = [p for p in prompts if normalise_prompt(key(p)) not in seen]
    return kept, len(prompts) - len(kept)
