"""What `chord bench loop --vs-trl` hangs into TRL's GRPOTrainer (bench_trl.py): its clock, its
reward and its held-out evaluation, each measured or scored as chord's loop does it.

    StepClock         the time at every on_step_end: steps/s as chord's clock/seconds gives it
    TaskReward        TRL's reward function: chord's scoring of the completion ids TRL sampled
    HeldOutAccuracy   avg@k on the task's held-out prompts at loop.py's evaluation steps
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Sequence, Tuple

import torch
from transformers import GenerationConfig, TrainerCallback

from ..data import seeding
from ..rewards.scoring import score
from ..rollout.sampling import stop_token_ids
from ..types import Rollout

EVAL_BATCH_ROWS = 256  # rows per generate() call of the evaluation (the in-process engine's limit)


def finish_reason(ids: Sequence[int], stop: Sequence[int]) -> str:
    """ "stop" when the response ends with a stop token (TRL keeps it, as chord does), else it
    was cut by the length limit: "length", which chord's scoring gives -1."""
    return "stop" if ids and ids[-1] in stop else "length"


class StepClock(TrainerCallback):
    def __init__(self):
        self.times: List[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


class TaskReward:
    """A TRL reward function: the dataset's `index` column names each completion's prompt row,
    and chord's score() rates the completion ids as it rates chord's rollouts."""

    __name__ = "chord_task_reward"  # TRL names its reward metrics after this

    def __init__(self, task, rows: Sequence[Any], scorer):
        self.task, self.rows, self.scorer = task, rows, scorer
        self.stop = stop_token_ids(task.tokenizer)
        self.means: List[float] = []  # mean training reward per step

    def __call__(self, prompts, completions, completion_ids, index, **_) -> List[float]:
        rows = [self.rows[i] for i in index]
        rollouts = [
            Rollout(list(row.prompt_ids), list(ids), [], finish_reason(ids, self.stop), prompt_index=j)
            for j, (row, ids) in enumerate(zip(rows, completion_ids))
        ]
        rewards = score(self.scorer, self.task.reward_name, self.task.tokenizer, rollouts, rows)
        self.means.append(sum(rewards) / len(rewards))
        return rewards


class HeldOutAccuracy(TrainerCallback):
    """avg@k (train.eval_samples) on task.evaluation, sampled at the rollout temperature and
    top_p, before the first update and after every train.eval_every-th and the last one (the
    steps of loop.py's eval_due); `curve` maps updates to accuracy. Each evaluation is seeded
    by (train.seed, updates), in a forked RNG so that training's sampling is left as it was."""

    def __init__(self, cfg, task, scorer, tokenizer):
        self.cfg, self.task, self.scorer = cfg, task, scorer
        self.stop = stop_token_ids(task.tokenizer)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.curve: Dict[int, float] = {}

    def due(self, updates: int) -> bool:
        every, steps = self.cfg.train.eval_every, self.cfg.train.steps
        return bool(every) and (updates % every == 0 or updates == steps)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.due(0):
            self.curve[0] = self.evaluate(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.due(state.global_step):
            self.curve[state.global_step] = self.evaluate(model, state.global_step)

    def evaluate(self, model, updates: int) -> float:
        rows, k, r = self.task.evaluation, self.cfg.train.eval_samples, self.cfg.rollout
        gen = GenerationConfig(
            do_sample=True,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=0,
            max_new_tokens=r.max_new_tokens,
            eos_token_id=list(self.stop),
            pad_token_id=self.pad,
        )
        jobs = [(i, s) for i in range(len(rows)) for s in range(k)]
        device = next(model.parameters()).device
        training = model.training
        model.eval()
        rollouts: List[Rollout] = []
        with torch.no_grad(), torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(seeding.step_seed(self.cfg.train.seed, updates, salt=seeding.EVAL))
            for lo in range(0, len(jobs), EVAL_BATCH_ROWS):
                chunk = jobs[lo : lo + EVAL_BATCH_ROWS]
                responses = self._sample(model, [rows[i].prompt_ids for i, _ in chunk], gen, device)
                for (i, s), ids in zip(chunk, responses):
                    reason = finish_reason(ids, self.stop)
                    rollouts.append(Rollout(list(rows[i].prompt_ids), ids, [], reason, prompt_index=i, sample_index=s))
        model.train(training)
        rewards = score(self.scorer, self.task.reward_name, self.task.tokenizer, rollouts, rows)
        return sum(x == 1.0 for x in rewards) / len(rewards)

    def _sample(self, model, prompts: Sequence[Sequence[int]], gen, device) -> List[List[int]]:
        """One generate() call over left-padded prompts; each response up to and including its
        first stop token."""
        ids, mask = _left_pad(prompts, self.pad)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen)
        responses = []
        for row in out[:, ids.shape[1] :].tolist():
            cut = next((j + 1 for j, t in enumerate(row) if t in self.stop), len(row))
            responses.append(row[:cut])
        return responses


def _left_pad(prompts: Sequence[Sequence[int]], pad: int) -> Tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
    return ids, mask
