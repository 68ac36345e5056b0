"""`chord export-hf CONFIG CHECKPOINT OUT`: a training checkpoint as a Hugging Face folder."""

from __future__ import annotations

import argparse

from ..config import Config, load_config
from ..hf.export import export_hf


def run(args: argparse.Namespace) -> int:
    return run_export_hf(load_config(args.config, args.overrides), args.checkpoint, args.out)


def run_export_hf(cfg: Config, checkpoint_dir: str, out_dir: str) -> int:
    """`chord export-hf CONFIG CHECKPOINT OUT`: build the trainer's model for `cfg` (any TP / PP
    layout, every rank of the job calls this), restore the weights of a training checkpoint
    (a step folder, or a root with a `latest` pointer) and write them as a Hugging Face folder."""
    from ..train.engine import MegatronEngine  # imports Megatron: only when run

    engine = MegatronEngine(cfg)
    step, _ = engine.load(checkpoint_dir)
    rank0 = engine.par.rank == 0
    out = export_hf(engine.export_weights(), cfg, out_dir, write=rank0)
    if rank0:
        print(f"exported step {step} of {checkpoint_dir} to {out}")
    return 0
