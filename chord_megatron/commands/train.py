"""`chord train CONFIG [key=value ...] [--resume | --overwrite] [--nproc N]`: run (or resume) CHORD training.

An output folder that holds another run is refused unless --resume (continue it) or --overwrite
(replace it) says which is meant (run_dir.py).

With --nproc N the command restarts itself in N local processes, torchrun-style (one machine,
gloo or NCCL): each child gets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT from
torch's own elastic launcher and runs the same subcommand. Multi-node jobs use launch/ (slurm),
which sets the same variables per node. At the end rank 0 prints held-out accuracy before and
after and writes a PNG of the run's curves.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import List

from ..config import load_config
from ..net import free_port
from ..run_dir import check_output_dir
from ..train.parallel import is_rank0, require_device


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    require_device(cfg.train.device)  # before anything else: no silent CPU fallback on a GPU job
    if is_rank0():  # before anything is written (the task's data too); other ranks leave the folder to rank 0
        check_output_dir(cfg, resume=args.resume, overwrite=args.overwrite)
    if args.nproc > 1:
        flags = [
            f
            for f, on in (
                ("--resume", args.resume),
                ("--overwrite", args.overwrite),
                ("--no-progress", args.no_progress),
            )
            if on
        ]
        return relaunch(args.nproc, ["train", args.config, *args.overrides, *flags])
    from ..loop import train

    result = train(cfg, resume=args.resume, progress=not args.no_progress and cfg.logging.progress)
    if result:
        print("final evaluation: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
        summarise_run(cfg)
    return 0


def relaunch(nproc: int, chord_args: List[str]) -> int:
    """Run `chord <chord_args>` in `nproc` processes; returns the worst exit status."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "chord_megatron.cli",
        *chord_args,
    ]
    return subprocess.call(cmd)


def summarise_run(cfg) -> None:
    """Held-out accuracy before and after, and a PNG of the run's curves (rank 0 only)."""
    from ..metrics.logger import read_metrics
    from ..metrics.report import plot_curves, series

    out = Path(cfg.train.output_dir)
    if not is_rank0() or not (out / "metrics.jsonl").exists():
        return
    records = read_metrics(out / "metrics.jsonl")
    steps, acc = series(records, "eval/accuracy")
    if len(acc) >= 2 and steps[0] == 0:
        print(
            f"held-out accuracy (avg@{cfg.train.eval_samples}): base model {acc[0]:.3f} -> "
            f"{acc[-1]:.3f} after {steps[-1]} steps"
        )
    png = plot_curves({cfg.model.name: records}, out / "curves.png")
    print(f"metrics: {out / 'metrics.jsonl'} (TensorBoard: {out / 'tensorboard'}), curves: {png}")
