"""`chord export-hf CONFIG CHECKPOINT OUT [--overwrite]`: a training checkpoint as a Hugging Face folder.

OUT must be new or empty (--overwrite: replace it), and never the model's own hf_path or the
checkpoint (hf/export.py check_export_target)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import Config, load_config
from ..hf.export import check_export_target, export_hf
from ..train.checkpoint import resolve_checkpoint


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    return run_export_hf(cfg, args.checkpoint, args.out, overwrite=args.overwrite)


def run_export_hf(cfg: Config, checkpoint_dir: str, out_dir: str, *, overwrite: bool = False) -> int:
    """`chord export-hf CONFIG CHECKPOINT OUT`: build the trainer's model for `cfg` (any TP / PP
    layout, every rank of the job calls this), restore the weights of a training checkpoint
    (a step folder, or a root with a `latest` pointer) and write them as a Hugging Face folder."""
    # Before minutes go into building the model: a refused OUT fails now.
    check_export_target(out_dir, cfg, overwrite=overwrite, checkpoint=checkpoint_dir)
    resolve_checkpoint(checkpoint_dir)  # a path that holds no checkpoint: one line, now
    replaced = sorted(p.name for p in Path(out_dir).iterdir()) if Path(out_dir).is_dir() else []
    from ..train.engine import MegatronEngine  # imports Megatron: only when run

    engine = MegatronEngine(cfg)
    step, _ = engine.load(checkpoint_dir)
    rank0 = engine.par.rank == 0
    out = export_hf(engine.export_weights(), cfg, out_dir, write=rank0, overwrite=overwrite)
    if rank0:
        print(f"exported step {step} of {checkpoint_dir} to {out}")
        if replaced:
            shown = ", ".join(replaced[:6]) + (f", ... ({len(replaced)} in all)" if len(replaced) > 6 else "")
            print(f"--overwrite: replaced what {out} held: {shown}")
    return 0
