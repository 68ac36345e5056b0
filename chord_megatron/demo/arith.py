"""The generated toy task of the CPU demo: multi-digit addition.

Why this task shows CHORD's point at laptop scale: the base model is pre-trained to answer
directly ("37+48=85"), which a tiny model gets wrong whenever carries pile up. The expert data
writes the carrying out, digit by digit from the right, before the answer:

    prompt  "37+48="
    direct  "85"                      (what the base model was taught)
    expert  "7+8+0=15,3+4+1=08|85"    (a pattern the base model has never seen)

Rewards are checkable (the number after the last "|", or the whole response), so RL works
on any format; SFT on expert rows brings in the scratchpad, which the model can then exploit.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

ANSWER = re.compile(r"^\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}="

    @property
    def answer(self) -> int:
        return self.a + self.b

    def direct(self) -> str:
        return str(self.answer)

    def expert(self, drop_carry: bool = False) -> str:
        """The written-out carrying: one "x+y+c=ss" step per digit, right to left, then |answer.
        drop_carry: the imperfect expert's mistake, the first carry forgotten (written as 0) and
        the rest, answer included, worked out consistently from there (a wrong answer whenever
        the problem has a carry)."""
        xs, ys = str(self.a)[::-1], str(self.b)[::-1]
        steps, carry, dropped, digits = [], 0, False, []
        for i in range(max(len(xs), len(ys))):
            x = int(xs[i]) if i < len(xs) else 0
            y = int(ys[i]) if i < len(ys) else 0
            if drop_carry and carry and not dropped:
                carry, dropped = 0, True
            s = x + y + carry
            steps.append(f"{x}+{y}+{carry}={s:02d}")
            digits.append(s % 10)
            carry = s // 10
        value = int("".join(map(str, ([carry] if carry else []) + digits[::-1])))
        return ",".join(steps) + f"|{value}"

    @property
    def has_carry(self) -> bool:
        return self.expert(drop_carry=True) != self.expert()


def make_splits(
    digits: int, n_rl: int, n_expert: int, n_eval: int, seed: int, n_val: int = 0
) -> Dict[str, List[Problem]]:
    """Disjoint problem sets: RL prompts, expert (SFT) problems, held-out evaluation and the
    base stage's validation problems (its stop rule). Drawn in that order from one generator, so
    asking for validation problems leaves the other sets as they were."""
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    space = (hi - lo + 1) ** 2
    if n_rl + n_expert + n_eval + n_val > space // 2:
        raise ValueError(f"arith: {n_rl + n_expert + n_eval + n_val} problems asked of a space of {space}")
    rng = random.Random(seed)
    seen: set = set()

    def draw(n: int) -> List[Problem]:
        out = []
        while len(out) < n:
            p = Problem(rng.randint(lo, hi), rng.randint(lo, hi))
            if (p.a, p.b) not in seen:
                seen.add((p.a, p.b))
                out.append(p)
        return out

    evaluation = draw(n_eval)
    rl = draw(n_rl)
    expert = draw(n_expert)
    val = draw(n_val)
    return {"eval": evaluation, "rl": rl, "expert": expert, "val": val}


def pretrain_problems(digits: int, n: int, seed: int, exclude: Sequence[Problem]) -> List[Problem]:
    """Problems for the base model's direct-answer pre-training, never from `exclude` (eval)."""
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    banned = {(p.a, p.b) for p in exclude}
    rng = random.Random(seed + 7919)
    out: List[Problem] = []
    while len(out) < n:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if (a, b) not in banned:
            out.append(Problem(a, b))
    return out


def parse_answer(response: str) -> Tuple[bool, int | None]:
    """(well_formed, value): the number after the last "|", or the whole response."""
    tail = response.rsplit("|", 1)[-1]
    m = ANSWER.match(tail)
    return (True, int(m.group(1))) if m else (False, None)


def arith_reward(prompt: str, response: str, metadata: dict) -> float:
    """+1 correct, 0 a wrong but well-formed number, -0.1 no parsable answer (the paper's
    math scheme, less the overlong case, which the trainer scores from the finish reason)."""
    ok, value = parse_answer(response)
    if not ok:
        return -0.1
    return 1.0 if value == int(metadata["answer"]) else 0.0


def register_arith_reward() -> None:
    """The generated task's reward joins the registry under the name configs use ("arith")."""
    from ..rewards import register_reward, registered_rewards

    if "arith" not in registered_rewards():
        register_reward("arith")(arith_reward)


def wrong_expert_rows(problems: Sequence[Problem], rate: float, seed: int) -> set:
    """Indices of the expert problems the imperfect expert gets wrong: round(rate * n) of them,
    drawn (seeded) from those with a carry to forget, so that `rate` is the exact share of wrong
    rows. Refused when there are too few problems with a carry."""
    if not rate:
        return set()
    candidates = [i for i, p in enumerate(problems) if p.has_carry]
    k = round(rate * len(problems))
    if k > len(candidates):
        raise ValueError(
            f"arith: an expert error rate of {rate} needs {k} problems with a carry, there are {len(candidates)}"
        )
    return set(random.Random(seed + 104729).sample(candidates, k))


def styled_rows(n: int, frac: float, seed: int) -> set:
    """Indices of the base stage's pre-training problems written in the expert's style: round(frac * n)."""
    return set(random.Random(seed + 15485863).sample(range(n), round(frac * n))) if frac else set()
