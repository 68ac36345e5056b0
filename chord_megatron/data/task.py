"""A training task: tokenizer, RL prompts, expert rows, held-out prompts and the reward.

Which rows a step uses is a pure function of (seed, step): each set is walked in a fresh
permutation per epoch. A resumed run therefore needs nothing but the step to pick up exactly
where it left off, and every variant of `chord compare` sees the same prompts in the same order.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ..config import Config
from ..demo.arith import make_splits, register_arith_reward, wrong_expert_rows
from . import ExpertRow, PromptRow, load_expert, load_prompts, seeding, write_jsonl
from .hf_tokenizer import load_tokenizer
from .overlap import drop_overlap


@dataclass
class Task:
    tokenizer: Any
    prompts: List[PromptRow]
    expert: List[ExpertRow]
    evaluation: List[PromptRow]
    reward_name: str
    seed: int
    skipped: Dict[str, Counter] = field(default_factory=dict)  # file kind -> reason -> rows dropped
    evaluation_source: str = ""  # where the held-out prompts come from (a file, or which RL prompts)

    def rl_prompts(self, step: int, n: int) -> List[PromptRow]:
        return _walk(self.prompts, step, n, self.seed, salt=seeding.PROMPTS)

    def expert_rows(self, step: int, n: int) -> List[ExpertRow]:
        if n and not self.expert:
            raise ValueError(
                "the task has no expert rows but the config asks for some (algorithm.expert_data_ratio > 0)"
            )
        return _walk(self.expert, step, n, self.seed, salt=seeding.EXPERT)


def _walk(rows: Sequence, step: int, n: int, seed: int, salt: int) -> list:
    """Rows step*n .. step*n + n - 1 of an endless sequence of per-epoch permutations."""
    out, size = [], len(rows)
    perms: Dict[int, List[int]] = {}
    for pos in range(step * n, step * n + n):
        epoch = pos // size
        if epoch not in perms:
            perms[epoch] = seeding.epoch_order(size, seed, salt, epoch)
        out.append(rows[perms[epoch][pos % size]])
    return out


def write_arith_files(cfg: Config, out_dir: str | Path) -> Dict[str, Path]:
    """Generate the arithmetic task's JSONL files (prompts, expert solutions, held-out eval)."""
    d = cfg.data
    splits = make_splits(d.arith_digits, d.arith_rl_prompts, d.arith_expert_rows, d.arith_eval_prompts, d.seed)
    out = Path(out_dir)
    paths = {k: out / f"{k}.jsonl" for k in ("prompts", "expert", "eval")}
    write_jsonl(paths["prompts"], ({"prompt": p.prompt, "answer": p.answer} for p in splits["rl"]))
    wrong = wrong_expert_rows(splits["expert"], d.expert_error_rate, d.seed)
    write_jsonl(
        paths["expert"],
        ({"prompt": p.prompt, "response": p.expert(drop_carry=i in wrong)} for i, p in enumerate(splits["expert"])),
    )
    write_jsonl(paths["eval"], ({"prompt": p.prompt, "answer": p.answer} for p in splits["eval"]))
    return paths


def load_task(cfg: Config) -> Task:
    """The task of a config: generated (data.task = arith, written to <output_dir>/data and read
    back through the same validated loader as user files) or read from JSONL files."""
    from ..rewards import get_reward

    d = cfg.data
    register_arith_reward()
    get_reward(d.reward, key="data.reward")  # a typo stops here, before a base model and an engine are built
    if cfg.model.hf_path:  # and so does a checkpoint folder that is not one
        from ..hf.weights import check_hf_checkpoint

        check_hf_checkpoint(cfg)
    tokenizer = load_tokenizer(cfg)  # data.tokenizer or model.hf_path (HF), else characters
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ValueError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} tokens"
        )
    if d.task == "arith":
        paths = write_arith_files(cfg, Path(cfg.train.output_dir) / "data")
        prompt_path, expert_path, eval_path = paths["prompts"], paths["expert"], paths["eval"]
    else:
        prompt_path, expert_path, eval_path = d.prompt_path, d.expert_path, d.eval_path
    skipped: Dict[str, Counter] = {}
    prompts, skipped["prompts"] = load_prompts(
        prompt_path, tokenizer, max_prompt_tokens=d.max_prompt_tokens, on_bad_row=d.on_bad_row
    )
    expert: List[ExpertRow] = []
    if expert_path:
        expert, skipped["expert"] = load_expert(
            expert_path,
            tokenizer,
            max_prompt_tokens=d.max_prompt_tokens,
            max_response_tokens=d.max_response_tokens,
            on_bad_row=d.on_bad_row,
        )
    if expert:  # RL prompts that are also expert problems (normalised text) are dropped, and counted
        prompts, overlap = drop_overlap(prompts, [e.raw_prompt for e in expert], key=lambda p: p.raw_prompt)
        if overlap:
            skipped["prompts"]["in_expert_set"] += overlap
            print(
                f"chord: {overlap} RL prompts of {prompt_path} are also expert problems in {expert_path}: "
                "left out of RL",
                file=sys.stderr,
            )
        if not prompts:
            raise ValueError(f"{prompt_path}: every RL prompt also appears in the expert set {expert_path}")
    evaluation = prompts[: min(len(prompts), 64)]
    evaluation_source = f"the first {len(evaluation)} RL prompts of {prompt_path}"
    if eval_path:
        evaluation_source = str(eval_path)
        evaluation, skipped["eval"] = load_prompts(
            eval_path, tokenizer, max_prompt_tokens=d.max_prompt_tokens, on_bad_row=d.on_bad_row
        )
    skipped = {k: v for k, v in skipped.items() if v}
    return Task(tokenizer, prompts, expert, evaluation, d.reward, cfg.train.seed, skipped, evaluation_source)
