"""Start N local processes of a `chord` command, torchrun-style (one machine, gloo or NCCL).

Each child gets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT from torch's own
elastic launcher and runs the same subcommand; torch.distributed then joins them. Multi-node
jobs use launch/ (slurm), which sets the same variables per node.
"""
from __future__ import annotations

import socket
import subprocess
import sys
from typing import List


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relaunch(nproc: int, chord_args: List[str]) -> int:
    """Run `chord <chord_args>` in `nproc` processes; returns the worst exit status."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={nproc}", "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "chord_megatron.cli", *chord_args,
    ]  # fmt: skip
    return subprocess.call(cmd)
