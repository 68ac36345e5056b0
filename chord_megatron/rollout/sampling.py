"""What a run asks its rollout engine for, decided once for training and `chord eval`:

    stop_token_ids(tokenizer)                  the ids that end a response: training's rollouts, the
                                               sync probe, the evaluation and `chord eval` all stop on these
    evaluation_params(cfg, tokenizer, updates) the held-out evaluation of the policy after `updates`
                                               updates (0 = the base model)

`chord eval` of the same weights (the base model, or the checkpoint saved after `updates`
updates) on the same prompts draws the very samples training's evaluation drew, so the two
report the same accuracy: same stop ids, same temperature and top_p, same seed, one call.
"""

from __future__ import annotations

from typing import Tuple

from ..data import seeding
from .engine import SamplingParams


def stop_token_ids(tokenizer) -> Tuple[int, ...]:
    """The tokenizer's eos and, for a Hugging Face tokenizer, every eos id its folder's
    generation_config.json lists (an instruct model's end-of-turn and end-of-text tokens)."""
    return tuple(int(t) for t in tokenizer.stop_ids)


def evaluation_params(cfg, tokenizer, updates: int) -> SamplingParams:
    """avg@k sampling at the rollout settings (the paper's protocol), seeded by (train.seed, updates)."""
    return SamplingParams.from_config(
        cfg.rollout,
        stop_token_ids=stop_token_ids(tokenizer),
        seed=seeding.step_seed(cfg.train.seed, updates, salt=seeding.EVAL),
    )
