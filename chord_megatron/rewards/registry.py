"""The reward registry: functions by name, and the error every reward failure becomes.

The contract is `fn(prompt: str, response: str, metadata: dict) -> float`. Functions must be
importable by worker processes (defined at a module's top level): RewardRunner
(rewards/runner.py) sends them to spawned workers by reference.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from ..errors import ChordError

RewardFn = Callable[[str, str, Dict[str, Any]], float]

_REGISTRY: Dict[str, RewardFn] = {}


class RewardError(ChordError, RuntimeError):
    """A reward function failed on a sample; the message names both."""

    def __init__(self, name: str, index: int, problem: str):
        self.name, self.index, self.problem = name, index, problem
        super().__init__(f"reward '{name}' failed on sample {index}: {problem}")


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make `fn` available as `name` (names are unique)."""

    def deco(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"a reward named '{name}' is already registered ({_REGISTRY[name].__module__})")
        _REGISTRY[name] = fn
        return fn

    return deco


class UnknownReward(ChordError, KeyError):
    """A reward name nothing registered: a config mistake (exit 2), found when the task loads."""

    exit_code, kind = 2, "config error"

    def __str__(self) -> str:  # KeyError's own would quote the message
        return str(self.args[0])


def get_reward(name: str, *, key: str = "") -> RewardFn:
    """The function registered as `name`; `key` (e.g. "data.reward") names where it was asked for."""
    try:
        return _REGISTRY[name]
    except KeyError:
        where = f"{key}: " if key else ""
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownReward(f"{where}unknown reward '{name}' (registered: {known})") from None


def registered_rewards() -> List[str]:
    return sorted(_REGISTRY)
