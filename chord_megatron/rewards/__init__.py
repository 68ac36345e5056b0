"""Rewards: a registry of functions by name, a runner that scores samples in worker processes,
and the built-in rewards.

    registry.py     register_reward / get_reward / registered_rewards, RewardError
    runner.py       RewardRunner: a process pool with a timeout per sample
    exact.py        "exact_match": the final answer against metadata["answer"]
    math_answer.py  "math": the paper's math reward (math-verify) with its format penalties
    tool_call.py    "tool_call": tool calls by exact match (ToolACE / Hermes / Llama 3 formats)

The demo task's reward ("arith") registers from chord_megatron/demo/arith.py.
"""

from . import exact, math_answer, tool_call  # noqa: F401 (the built-in rewards register on import)
from .registry import RewardError, RewardFn, get_reward, register_reward, registered_rewards
from .runner import RewardRunner, check_reward_value

__all__ = [
    "RewardError",
    "RewardFn",
    "RewardRunner",
    "check_reward_value",
    "get_reward",
    "register_reward",
    "registered_rewards",
]
