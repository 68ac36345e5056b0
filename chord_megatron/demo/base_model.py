"""The demo's base model: trained in a first stage, then cached.

CHORD post-trains a model that already exists. For the generated arithmetic task there is no
such model to download, so the first stage makes one: plain SFT (mu = 1, phi = none) of a
randomly initialised model on direct answers ("37+48=85") with the run's own Megatron engine.
The weights are cached under base.cache_dir, keyed by everything that shapes them, so every
later run and every `chord compare` variant starts from the very same base.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist

from ..config import Config
from ..data import CharTokenizer, ExpertRow
from ..data.batch import build_train_batch
from ..metrics.provenance import rounding_kind
from ..train.parallel import is_rank0
from .arith import make_splits, pretrain_problems, styled_rows
from .plateau import Plateau


def cache_key(cfg: Config) -> str:
    """Everything the base weights depend on (not the parallel layout: the weights are full),
    the machine kind included: another CPU's kernels train another base from the same config
    (README, "Another CPU's kernels"), so a cache shared between machines (a cluster's home
    folder) must not hand one machine's base to a run that reproduces the demo on another."""
    import dataclasses

    d = cfg.data
    key = {
        "model": dataclasses.asdict(cfg.model),
        "base": {k: v for k, v in dataclasses.asdict(cfg.base).items() if k != "cache_dir"},
        "task": [d.task, d.arith_digits, d.arith_rl_prompts, d.arith_expert_rows, d.arith_eval_prompts, d.seed],
        "seed": cfg.train.seed,
        "megatron": cfg.megatron,
        "machine": rounding_kind(),
        "version": 2,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(cfg: Config) -> Path:
    return Path(cfg.base.cache_dir) / f"base-{cache_key(cfg)}.pt"


def pretrain_config(cfg: Config) -> Config:
    """The run's config turned into plain SFT with the base stage's optimiser settings."""
    b = cfg.base
    return cfg.replace(
        **{
            "algorithm.mu.warmup": "0",
            "algorithm.mu.decay": "0",
            "algorithm.mu.peak": "1.0",
            "algorithm.mu.valley": "1.0",
            "algorithm.token_weight": "none",
            "algorithm.expert_data_ratio": "1.0",
            "optim.lr": str(b.lr),
            "optim.lr_schedule": "constant",
            "optim.lr_warmup_steps": "0",
        }
    )


def base_weights(cfg: Config, *, progress: Optional[bool] = None):
    """Full Megatron state dict of the base model (training and caching it on first use), or
    None when the run starts from random weights. Collective: call on every rank. `progress`
    (default logging.progress): a progress bar over the base stage on rank 0."""
    if cfg.model.hf_path:  # checked against config.json, read lazily layer by layer (hf/weights.py)
        from ..hf.weights import hf_state_dict

        return hf_state_dict(cfg)
    if cfg.base.steps == 0:
        return None
    path, cached = _rank0_cache_view(cfg)
    if not cached:
        weights = train_base(cfg, progress=cfg.logging.progress if progress is None else progress)
        if is_rank0():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two processes (compare shards) may train one base
            torch.save(weights, tmp)
            tmp.replace(path)  # atomic: a crash never leaves a half-written cache behind
        if dist.is_initialized():
            dist.barrier()
    return torch.load(path, map_location="cpu", weights_only=True)


def _rank0_cache_view(cfg: Config) -> Tuple[Path, bool]:
    """The cache file and whether it exists, as rank 0 sees them, on every rank: nodes of another
    CPU kind compute another key (cache_key), and a rank that missed the file rank 0 found would
    train the base alone, in collectives no other rank joins."""
    path = cache_path(cfg)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return path, path.exists()
    from ..train.parallel import init_distributed

    init_distributed(cfg.parallel.backend)  # the engine would join it next; the base decides first
    box = [(str(path), path.exists())]
    dist.broadcast_object_list(box, src=0)  # the default group: the object group's timeout is set later
    return Path(box[0][0]), box[0][1]


def stage_log_path(cfg: Config) -> Path:
    """What the stage did (steps run, why it stopped, its held-out scores), beside the weights."""
    return cache_path(cfg).with_suffix(".json")


def read_stage_log(cfg: Config) -> Optional[dict]:
    path = stage_log_path(cfg)
    return json.loads(path.read_text()) if path.exists() else None


def train_base(cfg: Config, *, progress: bool = False) -> Dict[str, torch.Tensor]:
    from ..metrics.progress import ProgressBar
    from ..train.engine import MegatronEngine

    pcfg = pretrain_config(cfg)
    d, b = cfg.data, cfg.base
    tok = CharTokenizer()
    n_val = b.val_problems if b.eval_every else 0
    splits = make_splits(
        d.arith_digits, d.arith_rl_prompts, d.arith_expert_rows, d.arith_eval_prompts, d.seed, n_val=n_val
    )
    problems = pretrain_problems(d.arith_digits, b.problems, cfg.train.seed, exclude=splits["eval"] + splits["val"])
    styled = styled_rows(len(problems), b.expert_style_frac, cfg.train.seed)
    rows = [_row(tok, p, expert=i in styled) for i, p in enumerate(problems)]
    # Scored: the probability of the exact answer, and with style mixed in also of the exact
    # correct scratchpad (two disjoint sequences: their probabilities add).
    val = [_row(tok, p) for p in splits["val"]] + ([_row(tok, p, expert=True) for p in splits["val"]] if styled else [])
    val = build_train_batch([], torch.zeros(0), val, pad_id=tok.pad_id) if val else None
    engine = MegatronEngine(pcfg)
    rule = Plateau(b.patience, b.min_delta, b.target)
    n, stopped, step = b.batch_rows, "max_steps", 0
    # about a minute of silence otherwise, before a demo run shows anything
    bar = ProgressBar(0, b.steps, enabled=progress and is_rank0(), desc="base model", keys=(("loss", "loss"),))
    for step in range(b.steps):
        chunk = [rows[(step * n + i) % len(rows)] for i in range(n)]
        batch = build_train_batch([], torch.zeros(0), chunk, pad_id=tok.pad_id)
        bar.update(engine.train_step(batch, step, mu=1.0))
        if (
            b.eval_every
            and (step + 1) % b.eval_every == 0
            and rule.update(step + 1, exact_answer_prob(engine, val, forms=2 if styled else 1))
        ):
            stopped = rule.reason
            break
    bar.close()
    weights = {name: t.detach().cpu().clone() for name, t in engine.export_weights()}
    del engine
    log = {"steps_run": step + 1 if b.steps else 0, "stopped": stopped, "val_exact_prob": rule.history}
    if is_rank0():
        print(
            f"base stage: {log['steps_run']} steps ({stopped})"
            + (f", held-out exact-answer probability {rule.history[-1][1]:.3f}" if rule.history else ""),
            flush=True,
        )
        path = stage_log_path(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(log) + "\n")
    return weights


def _row(tok: CharTokenizer, p, expert: bool = False) -> ExpertRow:
    return ExpertRow(tok.encode_prompt(p.prompt), tok.encode(p.expert() if expert else p.direct()) + [tok.eos_id])


def exact_answer_prob(engine, batch, forms: int = 1) -> float:
    """p(the whole response, <eos> included) per row, summed over the `forms` blocks of rows
    (the same problems in each block, written differently), averaged over problems: the
    probability that one sample at temperature 1 is exactly a correct response, i.e. the base's
    expected accuracy in those forms, computed without sampling noise from one forward pass.
    Collective."""
    logp = engine.compute_logprobs(batch)
    per_row = torch.where(batch.loss_mask > 0, logp, torch.zeros_like(logp)).sum(dim=1)  # padding may hold anything
    return float(per_row.exp().view(forms, -1).sum(dim=0).mean())
