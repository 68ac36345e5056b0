"""Rank 0's side of a run -- the task, the rollout engine, the scorer, the metrics log -- behind
the verbs the driver (loop.py) calls on every rank.

Only rank 0 samples, scores and logs. Every rank holds a Services and calls the same verbs; on
the other ranks they do nothing, except `collect`, which hands every rank rank 0's batch (the
Megatron engine then takes its own data-parallel rows). What a step samples is a function of
(seed, step) and the weights alone (data/seeding.py), which is what makes `--resume` exact.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from .algo import adaptive_mu, group_advantages
from .config import Config
from .data import seeding
from .data.batch import build_train_batch, expert_rows_per_step
from .data.task import load_task
from .rollout.sampling import evaluation_params, stop_token_ids
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
        self.eos = stop_token_ids(self.task.tokenizer) if self.active else ()  # chord eval stops on the same
        self.rollout = self.scorer = self.logger = None
        # rollout.asynchronous: the next step's batch, being generated (a future, rank 0) or done
        self._ahead: Optional[Tuple[int, Any]] = None  # (step, future or StepData)
        self._background = None

    def start(self, start_step: int, *, resume: bool, state: Optional[Dict[str, Any]] = None) -> None:
        """Start the rollout engine, the reward workers and the metrics log (rank 0). `state`:
        what state() returned when the checkpoint resumed from was saved."""
        ahead = (state or {}).get("ahead")
        if ahead is not None and ahead["step"] == start_step:  # generated before the checkpoint
            self._ahead = (start_step, _step_data_from_state(ahead))
        if not self.active:
            return
        from .metrics.logger import MetricsLogger
        from .rewards.scoring import Scorer
        from .rollout.factory import rollout_engine_from_config

        cfg = self.cfg
        self.rollout = rollout_engine_from_config(cfg, eos_token_id=self.task.tokenizer.eos_id)
        if cfg.rollout.asynchronous:
            from concurrent.futures import ThreadPoolExecutor

            self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollouts-ahead")
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
        """generate -> reward: the step's batch, on every rank. With rollout.asynchronous the
        batch usually exists already (generated during the previous update, by the policy
        before it), and this starts the next step's in the background: call finish_ahead()
        before the weights change."""
        if self._ahead is not None and self._ahead[0] == step:
            data, self._ahead = self._ahead[1], None
        else:
            data = _broadcast(self._collect(step, self.cfg.algorithm.mu.at(step)) if self.active else None)
        nxt = step + 1
        if self.cfg.rollout.asynchronous and nxt < self.cfg.train.steps:
            job = self._background.submit(self._collect, nxt, self.cfg.algorithm.mu.at(nxt)) if self.active else None
            self._ahead = (nxt, job)
        return data

    def finish_ahead(self) -> Dict[str, float]:
        """rollout.asynchronous: wait for the next step's batch (every rank takes part) before
        a weight sync changes the weights it is sampled from. Returns how long the wait took."""
        if self._ahead is None or isinstance(self._ahead[1], StepData):
            return {}
        t0 = time.perf_counter()
        step, job = self._ahead
        self._ahead = (step, _broadcast(job.result() if job is not None else None))
        return {"rollout/wait_seconds": time.perf_counter() - t0}

    def state(self) -> Dict[str, Any]:
        """What a checkpoint must keep for --resume to continue exactly: the batch generated
        ahead (rollout.asynchronous), which the saved weights could not generate again.
        The same on every rank (finish_ahead broadcast it)."""
        if self._ahead is None:
            return {}
        step, data = self._ahead
        if not isinstance(data, StepData):
            raise RuntimeError("Services.state: call finish_ahead() first")
        return {"ahead": {"step": step, **_step_data_to_state(data)}}

    def _collect(self, step: int, mu: Optional[float]) -> StepData:
        """Sample the step's prompts, roll out, score, and assemble the mixed batch.

        `mu` is the step's scheduled mu (None when it depends on this step's rewards). At mu = 1
        the GRPO term has no weight, so the step is plain SFT on a full batch of expert rows; at
        mu = 0 it is plain GRPO and no expert rows are drawn."""
        from .rewards.scoring import score
        from .rollout.engine import generate_complete

        cfg, task, r = self.cfg, self.task, self.cfg.rollout
        t0 = time.perf_counter()
        sft_only = _sft_only(cfg, mu)
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
        reward_s = time.perf_counter() - t0 - gen_s
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
        if r.asynchronous and rollouts:  # one step off-policy: the ratio against the sampler's log-probs
            batch = dataclasses.replace(batch, old_logp=batch.rollout_logp)
        gen_tokens = sum(len(x.response_ids) for x in rollouts)
        metrics: Dict[str, float] = {
            "rollout/seconds": gen_s,
            "reward/seconds": reward_s,
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

    def forward_checks(self, step: int) -> bool:
        """Whether the training forward of step `step` scores tokens sampled from the weights
        pushed just before it (any rank can tell: the config says): a step with rollouts,
        unless they were generated ahead, by the weights before (rollout.asynchronous)."""
        cfg = self.cfg
        return step < cfg.train.steps and not cfg.rollout.asynchronous and not _sft_only(cfg, cfg.algorithm.mu.at(step))

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
            evaluation_params(cfg, task.tokenizer, updates),  # what chord eval of these weights draws
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
        if self._background is not None:
            self._background.shutdown(wait=True, cancel_futures=True)
        if self.active:
            self.logger.close()
            self.scorer.close()
            self.rollout.close()  # servers and routers this run started, the engine's process


def _step_data_to_state(data: StepData) -> Dict[str, Any]:
    """Plain containers and tensors (what a checkpoint's common state may hold)."""
    batch = {f.name: getattr(data.batch, f.name) for f in dataclasses.fields(data.batch)}
    return {"batch": batch, "rewards": list(data.rewards), "metrics": dict(data.metrics)}


def _step_data_from_state(state: Dict[str, Any]) -> StepData:
    from .types import TrainBatch

    return StepData(TrainBatch(**state["batch"]), list(state["rewards"]), dict(state["metrics"]))


def _sft_only(cfg: Config, mu: Optional[float]) -> bool:
    """A step at scheduled mu = 1 (or with only expert data) is plain SFT: no rollouts."""
    return mu == 1.0 or cfg.algorithm.expert_data_ratio == 1.0


def _broadcast(obj):
    """Rank 0's object on every rank (a no-op in a single process), through the gloo object
    group (train/parallel.py object_group): the other ranks may wait here for as long as rank 0
    rolls out, with parallel.rank0_wait_minutes as the limit and no GPU kept busy meanwhile."""
    return rank0_object(obj)
