"""`chord train CONFIG [key=value ...] [--resume | --overwrite] [--nproc N]`: run (or resume) CHORD training.

An output folder that holds another run is refused unless --resume (continue it) or --overwrite
(replace it) says which is meant (run_dir.py). The run's resolved config is written there as
config.resolved.yaml; a --resume with other settings says which.

With --nproc N the command restarts itself in N local processes, torchrun-style (one machine,
gloo or NCCL): each child gets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT from
torch's own elastic launcher and runs the same subcommand. Multi-node jobs use launch/ (slurm),
which sets the same variables per node. At the end rank 0 prints held-out accuracy before and
after and writes a PNG of the run's curves.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import List

from ..config import load_config
from ..net import free_port
from ..run_dir import (
    check_output_dir,
    checkpoint_root,
    save_settings,
    warn_if_resumed_with_other_settings,
)
from ..run_lock import output_dir_lock, refuse_if_in_use
from ..stop import EXIT_CODE, StopOnCtrlC, latest_step, resume_command, stopped
from ..train.parallel import is_rank0, require_device, set_cpu_threads


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    require_device(cfg.train.device)  # before anything else: no silent CPU fallback on a GPU job
    set_cpu_threads(cfg.train.cpu_threads)
    if is_rank0():  # before anything is written (the task's data too); other ranks leave the folder to rank 0
        refuse_if_in_use(cfg)
        check_output_dir(cfg, resume=args.resume, overwrite=args.overwrite)
    with output_dir_lock(cfg) if is_rank0() else contextlib.nullcontext():
        return _train(args, cfg)


def _train(args: argparse.Namespace, cfg) -> int:
    """The run, in this process or (--nproc) in N workers, once the folder is checked and held."""
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
        try:
            return relaunch(args.nproc, ["train", args.config, *args.overrides, *flags])
        except KeyboardInterrupt:  # the workers got the Ctrl-C too; torchrun has ended them
            raise stopped(None, checkpoint_root(cfg), resume_command_of(args)) from None
    if is_rank0():  # here, not before --nproc's relaunch: its rank 0 says it once
        if args.resume:
            warn_if_resumed_with_other_settings(cfg)
        save_settings(cfg)
    from ..loop import train

    progress = not args.no_progress and cfg.logging.progress
    stop = StopOnCtrlC()
    workers = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        if workers:  # the ranks would have to agree on the step to stop at: Ctrl-C stays plain
            result = train(cfg, resume=args.resume, progress=progress)
        else:
            with stop.armed():
                result = train(cfg, resume=args.resume, progress=progress, stop=stop)
    except KeyboardInterrupt:
        if workers:  # no traceback from every rank; `--nproc`'s parent prints the line
            return EXIT_CODE
        raise stopped(None, checkpoint_root(cfg), resume_command_of(args)) from None
    if stop.at is not None:
        raise stopped(stop.at, checkpoint_root(cfg), resume_command_of(args))
    if result:
        print("final evaluation: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
    summarise_run(cfg)
    return 0


def resume_command_of(args: argparse.Namespace) -> str:
    return resume_command(args.config, args.overrides, nproc=args.nproc, no_progress=args.no_progress)


def relaunch(nproc: int, chord_args: List[str]) -> int:
    """Run `chord <chord_args>` in `nproc` processes; returns the worst exit status. On Ctrl-C
    (which reaches torchrun and its workers as well) it waits for torchrun to end them, then
    raises KeyboardInterrupt."""
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
    # What torchrun would set with a banner about it (OMP_NUM_THREADS), and what launch/env.sh sets
    # for slurm jobs (Megatron warns in every worker with tensor parallelism otherwise); a value
    # the user set stays.
    env = {"OMP_NUM_THREADS": "1", "CUDA_DEVICE_MAX_CONNECTIONS": "1", **os.environ}
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        with contextlib.suppress(KeyboardInterrupt):
            proc.wait()
        raise


def summarise_run(cfg) -> None:
    """Held-out accuracy before and after, a PNG of the run's curves, and where everything is
    (rank 0 only; also after a run without evaluations, which prints nothing else)."""
    from ..metrics.logger import read_metrics
    from ..metrics.report import plot_curves, series

    if not is_rank0():
        return
    out, root = Path(cfg.train.output_dir), checkpoint_root(cfg)
    saved = latest_step(root)
    checkpoint = f"checkpoint: {root} (step {saved})" if saved is not None else "no checkpoint"
    if not (out / "metrics.jsonl").exists():
        print(f"done: {cfg.train.steps} steps; {checkpoint}")
        return
    records = read_metrics(out / "metrics.jsonl")
    steps, acc = series(records, "eval/accuracy")
    if len(acc) >= 2 and steps[0] == 0:
        print(
            f"held-out accuracy (avg@{cfg.train.eval_samples}): base model {acc[0]:.3f} -> "
            f"{acc[-1]:.3f} after {steps[-1]} steps"
        )
    try:
        curves = f", curves: {plot_curves({cfg.model.name: records}, out / 'curves.png')}"
    except ValueError:  # nothing to plot (a run resumed at its last step)
        curves = ""
    print(
        f"done: {cfg.train.steps} steps; metrics: {out / 'metrics.jsonl'} (TensorBoard: {out / 'tensorboard'})"
        f"{curves}; {checkpoint}"
    )
