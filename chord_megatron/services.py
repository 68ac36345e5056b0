"""Rank 0's side of a run -- the task, the rollout engine, the scorer, the metrics log -- behind
the verbs the driver (loop.py) calls on every rank.

Only rank 0 samples, scores and logs. Every rank holds a Services and calls the same verbs; on
the other ranks they do nothing, except `collect`, which hands every rank rank 0's batch (the
Megatron engine then takes its own data-parallel rows). What a step samples is a function of
(seed, step) and the weights alone (data/seeding.py), which is what makes `--resume` exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .algo import adaptive_mu, group_advantages
from .config import Config
from .data import seeding
from .data.batch import build_train_batch, expert_rows_per_step
from .data.task import load_task
from .train.parallel import is_rank0, rank0_object
from .types import Rollout


@dataclass
class StepData:
    """What rank 0 prepares for one step and broadcasts."""

    batch: Any
    rewards: List[float]
    metrics: Dict[str, float]


class Services:
    def __init__(self, cfg: Config):
        """Loads the task on rank 0 (before anything else: data problems should stop the run
        before minutes go into a base model and an engine)."""
        self.cfg = cfg
        self.active = is_rank0()
        self.task = load_task(cfg) if self.active else None
        self.eos = (self.task.tokenizer.eos_id,) if self.active else ()
        self.rollout = self.scorer = self.logger = None

    def start(self, start_step: int, *, resume: bool) -> None:
        """Start the rollout engine, the reward workers and the metrics log (rank 0)."""
        if not self.active:
            return
        from .metrics.logger import MetricsLogger
        from .rewards.scoring import Scorer
        from .rollout.factory import rollout_engine_from_config

        cfg = self.cfg
        self.rollout = rollout_engine_from_config(cfg, eos_token_id=self.task.tokenizer.eos_id)
        self.scorer = Scorer(self.task.reward_name)
        self.logger = MetricsLogger(
            Path(cfg.train.output_dir),
            jsonl=cfg.logging.jsonl,
            tensorboard=cfg.logging.tensorboard,
            resume_step=start_step if resume else None,
        )

    @property
    def probe_prompts(self) -> List[List[int]]:
        """The prompts a weight sync is verified on (the first held-out ones)."""
        return [p.prompt_ids for p in self.task.evaluation[:4]] if self.active else []

    def sampling(self, seed: int):
        from .rollout.engine import SamplingParams

        return SamplingParams.from_config(self.cfg.rollout, stop_token_ids=self.eos, seed=seed)

    def collect(self, step: int) -> StepData:
        """generate -> reward: the step's batch, on every rank."""
        data = self._collect(step, self.cfg.algorithm.mu.at(step)) if self.active else None
        return _broadcast(data)

    def _collect(self, step: int, mu: Optional[float]) -> StepData:
        """Sample the step's prompts, roll out, score, and assemble the mixed batch.

        `mu` is the step's scheduled mu (None when it depends on this step's rewards). At mu = 1
        the GRPO term has no weight, so the step is plain SFT on a full batch of expert rows; at
        mu = 0 it is plain GRPO and no expert rows are drawn."""
        from .rewards.scoring import score
        from .rollout.engine import generate_complete

        cfg, task, r = self.cfg, self.task, self.cfg.rollout
        t0 = time.perf_counter()
        sft_only = mu == 1.0 or cfg.algorithm.expert_data_ratio == 1.0
        n_prompts = 0 if sft_only else r.prompts_per_step
        prompts = task.rl_prompts(step, n_prompts)
        rollouts: List[Rollout] = []
        aborted = 0
        if prompts:
            rollouts, aborted = generate_complete(
                self.rollout,
                [p.prompt_ids for p in prompts],
                r.samples_per_prompt,
                self.sampling(seeding.step_seed(cfg.train.seed, step)),
            )
        gen_s = time.perf_counter() - t0
        rewards = score(self.scorer, task.reward_name, task.tokenizer, rollouts, prompts) if rollouts else []
        adv = group_advantages(
            torch.tensor(rewards, dtype=torch.float32),
            r.samples_per_prompt,
            eps=cfg.algorithm.adv_eps,
            scale=cfg.algorithm.adv_scale,
            singleton=cfg.algorithm.adv_singleton,
        )
        ratio = 1.0 if sft_only else (0.0 if mu == 0.0 else cfg.algorithm.expert_data_ratio)
        n_expert = expert_rows_per_step(len(rollouts), ratio, pure_sft_rows=r.prompts_per_step * r.samples_per_prompt)
        expert = task.expert_rows(step, n_expert)
        batch = build_train_batch(rollouts, adv, expert, pad_id=task.tokenizer.pad_id)
        gen_tokens = sum(len(x.response_ids) for x in rollouts)
        metrics: Dict[str, float] = {
            "rollout/seconds": gen_s,
            "rollout/tokens_per_s": gen_tokens / max(gen_s, 1e-9),
            "rollout/aborted": float(aborted),
        }
        if rollouts:
            t = torch.tensor(rewards)
            metrics.update(
                {
                    "reward/mean": float(t.mean()),
                    "reward/accuracy": float((t == 1.0).float().mean()),
                    "response/length": gen_tokens / len(rollouts),
                    "response/truncated": sum(x.finish_reason == "length" for x in rollouts) / len(rollouts),
                }
            )
        return StepData(batch, rewards, metrics)

    def mu(self, step: int, data: StepData) -> float:
        """The step's mu: scheduled, or (algorithm.mu.adaptive) from the step's rewards."""
        mu = self.cfg.algorithm.mu.at(step)
        if mu is None:
            return adaptive_mu(sum(data.rewards) / max(len(data.rewards), 1), tau=self.cfg.algorithm.mu.tau)
        return mu

    def evaluate(self, updates: int) -> Dict[str, float]:
        """avg@k on the held-out prompts at the rollout temperature (the paper's protocol), of the
        policy after `updates` updates (0 = the base model), logged under that step."""
        if not self.active:
            return {}
        from .rewards.scoring import score
        from .rollout.engine import generate_complete

        cfg, task = self.cfg, self.task
        k = cfg.train.eval_samples
        rollouts, aborted = generate_complete(
            self.rollout,
            [p.prompt_ids for p in task.evaluation],
            k,
            self.sampling(seeding.step_seed(cfg.train.seed, updates, salt=seeding.EVAL)),
        )
        rewards = score(self.scorer, task.reward_name, task.tokenizer, rollouts, task.evaluation)
        n = len(rollouts)
        result = {
            "eval/accuracy": sum(x == 1.0 for x in rewards) / n,
            "eval/reward": sum(rewards) / n,
            "eval/response_length": sum(len(x.response_ids) for x in rollouts) / n,
            "eval/aborted": float(aborted),
        }
        self.logger.log(updates, result)
        return result

    def log(self, step: int, metrics: Dict[str, float]) -> None:
        if self.active:
            self.logger.log(step, metrics)

    def close(self) -> None:
        if self.active:
            self.logger.close()
            self.scorer.close()


def _broadcast(obj):
    """Rank 0's object on every rank (a no-op in a single process), through the gloo object
    group (train/parallel.py object_group): the other ranks may wait here for as long as rank 0
    rolls out, with parallel.rank0_wait_minutes as the limit and no GPU kept busy meanwhile."""
    return rank0_object(obj)
