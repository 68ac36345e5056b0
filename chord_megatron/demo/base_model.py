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
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.distributed as dist

from ..config import Config
from ..data import CharTokenizer, ExpertRow
from ..data.batch import build_train_batch
from ..train.parallel import is_rank0
from .arith import make_splits, pretrain_problems


def cache_key(cfg: Config) -> str:
    """Everything the base weights depend on (not the parallel layout: the weights are full)."""
    import dataclasses

    d = cfg.data
    key = {
        "model": dataclasses.asdict(cfg.model),
        "base": {k: v for k, v in dataclasses.asdict(cfg.base).items() if k != "cache_dir"},
        "task": [d.task, d.arith_digits, d.arith_rl_prompts, d.arith_expert_rows, d.arith_eval_prompts, d.seed],
        "seed": cfg.train.seed,
        "megatron": cfg.megatron,
        "version": 1,
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
    path = cache_path(cfg)
    if not path.exists():
        weights = train_base(cfg, progress=cfg.logging.progress if progress is None else progress)
        if is_rank0():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(weights, tmp)
            tmp.replace(path)  # atomic: a crash never leaves a half-written cache behind
        if dist.is_initialized():
            dist.barrier()
    return torch.load(path, map_location="cpu", weights_only=True)


def train_base(cfg: Config, *, progress: bool = False) -> Dict[str, torch.Tensor]:
    from ..metrics.progress import ProgressBar
    from ..train.engine import MegatronEngine

    pcfg = pretrain_config(cfg)
    d = cfg.data
    tok = CharTokenizer()
    held_out = make_splits(d.arith_digits, d.arith_rl_prompts, d.arith_expert_rows, d.arith_eval_prompts, d.seed)[
        "eval"
    ]
    problems = pretrain_problems(d.arith_digits, cfg.base.problems, cfg.train.seed, exclude=held_out)
    rows = [ExpertRow(tok.encode_prompt(p.prompt), tok.encode(p.direct()) + [tok.eos_id]) for p in problems]
    engine = MegatronEngine(pcfg)
    n = cfg.base.batch_rows
    # about a minute of silence otherwise, before a demo run shows anything
    bar = ProgressBar(0, cfg.base.steps, enabled=progress and is_rank0(), desc="base model", keys=(("loss", "loss"),))
    for step in range(cfg.base.steps):
        chunk = [rows[(step * n + i) % len(rows)] for i in range(n)]
        batch = build_train_batch([], torch.zeros(0), chunk, pad_id=tok.pad_id)
        bar.update(engine.train_step(batch, step, mu=1.0))
    bar.close()
    weights = {name: t.detach().cpu().clone() for name, t in engine.export_weights()}
    del engine
    return weights
