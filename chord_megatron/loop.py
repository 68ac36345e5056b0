"""The CHORD driver: generate -> reward -> train -> sync -> evaluate -> save, one step at a time.

Every rank of a job runs this loop. Rank 0 owns the rollout engine, the rewards and the logs;
it broadcasts each step's batch, and every rank then calls the Megatron engine with it (the
engine takes its own data-parallel rows). What a step samples and trains on is a function of
(seed, step) and the weights alone, which is what makes `--resume` reproduce a run exactly.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .algo import adaptive_mu, group_advantages, staged_mu
from .batch import build_train_batch, expert_rows_per_step
from .config import Config
from .metrics import MetricsLogger
from .task import Task, load_task
from .types import Rollout

OVERLONG_REWARD = -1.0  # the paper's score for a response cut off by the length limit


@dataclass
class StepData:
    """What rank 0 prepares for one step and broadcasts."""

    batch: Any
    rewards: List[float]
    metrics: Dict[str, float]


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + step * 7919 + salt * 104_729) % (2**31 - 1)


def score(scorer, reward_name: str, tokenizer, rollouts: List[Rollout], prompts) -> List[float]:
    """Rewards of the rollouts. Each reward function sees the finish reason in its metadata;
    one that declares `handles_finish_reason` (the math reward: -1 only for a cut response
    without an answer) decides about cut responses itself, for the others a response cut off by
    the length limit scores OVERLONG_REWARD."""
    from .rewards import get_reward

    own = getattr(get_reward(reward_name), "handles_finish_reason", False)
    jobs = []
    for r in rollouts:
        p = prompts[r.prompt_index]
        jobs.append((p.prompt, tokenizer.decode(r.response_ids),
                     {"answer": p.answer, **p.metadata, "finish_reason": r.finish_reason}))  # fmt: skip
    rewards = scorer(jobs)
    return [OVERLONG_REWARD if r.finish_reason == "length" and not own else float(x)
            for r, x in zip(rollouts, rewards)]  # fmt: skip


def collect(step: int, cfg: Config, task: Task, rollout, scorer, sampling, mu: Optional[float]) -> StepData:
    """Rank 0: sample the step's prompts, roll out, score, and assemble the mixed batch.

    `mu` is the step's scheduled mu (None when it depends on this step's rewards). At mu = 1
    the GRPO term has no weight, so the step is plain SFT on a full batch of expert rows; at
    mu = 0 it is plain GRPO and no expert rows are drawn."""
    r = cfg.rollout
    t0 = time.perf_counter()
    sft_only = mu == 1.0 or cfg.algorithm.expert_data_ratio == 1.0
    n_prompts = 0 if sft_only else r.prompts_per_step
    prompts = task.rl_prompts(step, n_prompts)
    rollouts: List[Rollout] = []
    if prompts:
        rollouts = rollout.generate([p.prompt_ids for p in prompts], r.samples_per_prompt,
                                    sampling(seed=step_seed(cfg.train.seed, step)))  # fmt: skip
    gen_s = time.perf_counter() - t0
    rewards = score(scorer, task.reward_name, task.tokenizer, rollouts, prompts) if rollouts else []
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float32), r.samples_per_prompt,
                           eps=cfg.algorithm.adv_eps, scale=cfg.algorithm.adv_scale,
                           singleton=cfg.algorithm.adv_singleton)  # fmt: skip
    ratio = 1.0 if sft_only else (0.0 if mu == 0.0 else cfg.algorithm.expert_data_ratio)
    n_expert = expert_rows_per_step(len(rollouts), ratio, pure_sft_rows=r.prompts_per_step * r.samples_per_prompt)
    expert = task.expert_rows(step, n_expert)
    batch = build_train_batch(rollouts, adv, expert, pad_id=task.tokenizer.pad_id)
    gen_tokens = sum(len(x.response_ids) for x in rollouts)
    metrics: Dict[str, float] = {"rollout/seconds": gen_s, "rollout/tokens_per_s": gen_tokens / max(gen_s, 1e-9)}
    if rollouts:
        t = torch.tensor(rewards)
        metrics.update({
            "reward/mean": float(t.mean()),
            "reward/accuracy": float((t == 1.0).float().mean()),
            "response/length": gen_tokens / len(rollouts),
            "response/truncated": sum(x.finish_reason == "length" for x in rollouts) / len(rollouts),
        })  # fmt: skip
    return StepData(batch, rewards, metrics)


def scheduled_mu(step: int, cfg: Config) -> Optional[float]:
    """mu of `step` from the schedule; None when it is adaptive (it then needs the rewards)."""
    m = cfg.algorithm.mu
    if m.adaptive:
        return None
    return staged_mu(step, sft_steps=m.sft_steps, warmup=m.warmup, decay=m.decay, peak=m.peak, valley=m.valley)


def mu_for(step: int, cfg: Config, rewards: List[float]) -> float:
    mu = scheduled_mu(step, cfg)
    if mu is None:
        return adaptive_mu(sum(rewards) / max(len(rewards), 1), tau=cfg.algorithm.mu.tau)
    return mu


def evaluate(step: int, cfg: Config, task: Task, rollout, scorer, sampling) -> Dict[str, float]:
    """avg@k on the held-out prompts at the rollout temperature (the paper's protocol), of the
    policy after `step` updates (step 0 = the base model)."""
    k = cfg.train.eval_samples
    rollouts = rollout.generate([p.prompt_ids for p in task.evaluation], k,
                                sampling(seed=step_seed(cfg.train.seed, step, salt=1)))  # fmt: skip
    rewards = score(scorer, task.reward_name, task.tokenizer, rollouts, task.evaluation)
    n = len(rollouts)
    return {
        "eval/accuracy": sum(x == 1.0 for x in rewards) / n,
        "eval/reward": sum(rewards) / n,
        "eval/response_length": sum(len(x.response_ids) for x in rollouts) / n,
    }


# Engine metric names -> the names runs are logged under.
RENAME = {
    "loss": "loss/total", "grpo_loss": "loss/grpo", "sft_loss": "loss/sft", "sft_nll": "sft/nll",
    "phi_mean": "phi/mean", "clip_frac": "clip/frac", "dual_clip_frac": "clip/dual_frac",
    "approx_kl": "kl/approx", "ratio_mean": "ratio/mean", "entropy_rl": "entropy/rl",
    "entropy_sft": "entropy/expert", "tis_weight_mean": "tis/weight_mean",
    "logp_mismatch_mean": "mismatch/mean", "logp_mismatch_max": "mismatch/max", "logp_mismatch_kl": "mismatch/kl",
    "logp_mismatch_nonfinite": "mismatch/nonfinite",
    "rl_tokens": "tokens/rl", "sft_tokens": "tokens/expert", "grad_norm": "grad_norm", "lr": "lr", "mu": "mu",
    "padding_frac": "train/padding_frac",
}  # fmt: skip


# Token-means over one row kind mean nothing in a step without rows of that kind.
RL_ONLY = ("grpo_loss", "clip_frac", "dual_clip_frac", "approx_kl", "ratio_mean", "entropy_rl", "tis_weight_mean")
EXPERT_ONLY = ("sft_loss", "sft_nll", "phi_mean", "entropy_sft")


def rename(metrics: Dict[str, float]) -> Dict[str, float]:
    drop = (RL_ONLY if not metrics.get("rl_tokens") else ()) + (EXPERT_ONLY if not metrics.get("sft_tokens") else ())
    return {RENAME[k]: v for k, v in metrics.items() if k in RENAME and k not in drop}


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------
def train(cfg: Config, *, resume: bool = False, progress: bool = True) -> Dict[str, float]:
    """Run (or resume) the CHORD loop of `cfg`; returns the last evaluation's metrics.

    metrics.jsonl gets one record per update, `step` = its 0-based index (rollouts of the policy
    before the update, then the update's losses), and one record per evaluation, `step` = the
    number of updates applied (0 = the base model): both describe the same policy at a step.
    """
    import torch.distributed as dist

    from .base_model import base_weights
    from .rollout.engine import SamplingParams
    from .sync import WeightSync
    from .train.engine import MegatronEngine

    out = Path(cfg.train.output_dir)
    ckpt_dir = Path(cfg.checkpoint.dir or out / "checkpoints")
    # Data problems should stop the run before minutes go into a base model and an engine.
    rank0 = int(os.environ.get("RANK", "0")) == 0
    task = load_task(cfg) if rank0 else None
    engine = MegatronEngine(cfg, full_state_dict=base_weights(cfg))
    start = engine.load(str(ckpt_dir))[0] if resume else 0
    rollout = make_rollout_engine(cfg, task) if rank0 else None
    scorer = make_scorer(cfg, task) if rank0 else None
    eos = (task.tokenizer.eos_id,) if rank0 else ()
    sync = WeightSync(engine, rollout, cfg, probe_prompts=[p.prompt_ids for p in task.evaluation[:4]] if rank0 else (),
                      stop_token_ids=eos, pad_id=0)  # fmt: skip
    logger = MetricsLogger(out, jsonl=cfg.logging.jsonl, tensorboard=cfg.logging.tensorboard,
                           resume_step=start if resume else None) if rank0 else None  # fmt: skip

    def sampling(seed: int) -> SamplingParams:
        return SamplingParams.from_config(cfg.rollout, stop_token_ids=eos, seed=seed)

    def eval_due(updates: int) -> bool:
        every = cfg.train.eval_every
        return bool(every) and (updates % every == 0 or updates == cfg.train.steps)

    last_eval: Dict[str, float] = {}
    sync_metrics = sync.push(version=start)
    if rank0 and eval_due(start):  # the base model, or re-done after a resume: it is seeded
        last_eval = evaluate(start, cfg, task, rollout, scorer, sampling)
        logger.log(start, last_eval)
    bar = _progress(start, cfg.train.steps, enabled=progress and rank0)
    for step in range(start, cfg.train.steps):
        t0 = time.perf_counter()
        data = collect(step, cfg, task, rollout, scorer, sampling, scheduled_mu(step, cfg)) if rank0 else None
        data = _broadcast(data, dist)
        metrics = dict(data.metrics)
        metrics.update(rename(engine.train_step(data.batch, step, mu=mu_for(step, cfg, data.rewards))))
        metrics.update(sync_metrics)  # the sync that served this step's rollouts
        updates = step + 1
        if updates % cfg.rollout.sync_every == 0 or updates == cfg.train.steps:
            sync_metrics = sync.push(version=updates)
        if (cfg.checkpoint.save_every and updates % cfg.checkpoint.save_every == 0) or updates == cfg.train.steps:
            engine.save(str(ckpt_dir), {"step": updates}, step=updates)
        metrics["step/seconds"] = time.perf_counter() - t0
        metrics["train/tokens_per_s"] = float(data.batch.loss_mask.sum()) / metrics["step/seconds"]
        if rank0:
            logger.log(step, metrics)
            if eval_due(updates):
                last_eval = evaluate(updates, cfg, task, rollout, scorer, sampling)
                logger.log(updates, last_eval)
                metrics.update(last_eval)
            bar.update(metrics)
    bar.close()
    if rank0:
        logger.close()
        scorer.close()
    return last_eval


def make_rollout_engine(cfg: Config, task: Task):
    """The configured rollout engine, serving the trainer's architecture."""
    if cfg.rollout.engine == "inprocess":
        from .rollout.inprocess import InProcessEngine

        return InProcessEngine.from_config(cfg, eos_token_id=task.tokenizer.eos_id)
    from .rollout.sglang_engine import SGLangEngine

    return SGLangEngine.from_config(cfg)


def make_scorer(cfg: Config, task: Task):
    """jobs [(prompt, response, metadata)] -> rewards, in a worker process with a timeout."""
    from .rewards import RewardRunner

    runner = RewardRunner(task.reward_name, num_workers=1)

    class Scorer:
        def __call__(self, jobs):
            if not jobs:
                return []
            prompts, responses, metas = zip(*jobs)
            return runner(list(prompts), list(responses), list(metas))

        def close(self):
            runner.close()

    return Scorer()


def _broadcast(obj, dist):
    """Rank 0's object on every rank (a no-op in a single process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _progress:
    """A tqdm bar over the steps showing the numbers a user watches; silent when disabled."""

    KEYS = (("reward/mean", "reward"), ("eval/accuracy", "acc"), ("mu", "mu"), ("entropy/rl", "ent"),
            ("mismatch/max", "mism"))  # fmt: skip

    def __init__(self, start: int, total: int, *, enabled: bool):
        self.bar = None
        self.shown: Dict[str, str] = {}
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="chord", unit="step", dynamic_ncols=True)

    def update(self, metrics: Dict[str, float]) -> None:
        if self.bar is None:
            return
        for key, short in self.KEYS:
            if key in metrics:
                self.shown[short] = f"{metrics[key]:.3g}"
        self.bar.set_postfix(self.shown, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
