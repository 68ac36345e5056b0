"""Rollouts -> rewards, as training and `chord eval` both score them.

    Scorer(reward_name)                        jobs [(prompt, response, metadata)] -> rewards, in a
                                               worker process with a timeout (rewards/runner.py)
    score(scorer, name, tokenizer, rollouts, prompts)
                                               the rewards of rollouts, with the overlong policy

The overlong policy: a response cut off by the length limit scores OVERLONG_REWARD, unless its
reward function declares `handles_finish_reason` (the math reward: -1 only for a cut response
without an answer) and decides that case itself from metadata["finish_reason"].
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

from .registry import get_reward
from .runner import RewardRunner

OVERLONG_REWARD = -1.0  # the paper's score for a response cut off by the length limit


class Scorer:
    """jobs [(prompt, response, metadata)] -> rewards, in worker processes with a timeout."""

    def __init__(self, reward_name: str, *, num_workers: int = 1, **runner_options):
        self.runner = RewardRunner(reward_name, num_workers=num_workers, **runner_options)

    def __call__(self, jobs: Sequence[Tuple[str, str, dict]]) -> List[float]:
        if not jobs:
            return []
        prompts, responses, metas = zip(*jobs)
        return self.runner(list(prompts), list(responses), list(metas))

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def score(scorer, reward_name: str, tokenizer, rollouts, prompts) -> List[float]:
    """Rewards of the rollouts (r.prompt_index indexes `prompts`). Each reward function sees
    the finish reason in its metadata; see the module docstring for cut-off responses."""
    own = getattr(get_reward(reward_name), "handles_finish_reason", False)
    cut = [(r.prompt_index, r.sample_index) for r in rollouts if r.finish_reason == "abort"]
    if cut:  # a bug in the caller: rollout.engine.generate_complete regenerates them
        raise ValueError(f"aborted samples {cut[:5]} would be scored as complete answers; regenerate them first")
    jobs = []
    for r in rollouts:
        p = prompts[r.prompt_index]
        jobs.append(
            (
                p.prompt,
                tokenizer.decode(r.response_ids),
                {"answer": p.answer, **p.metadata, "finish_reason": r.finish_reason},
            )
        )
    rewards = scorer(jobs)
    return [OVERLONG_REWARD if r.finish_reason == "length" and not own else float(x) for r, x in zip(rollouts, rewards)]
