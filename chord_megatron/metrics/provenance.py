"""Where a measured number came from: the machine, its thread count, the software and the commit.

Every result the README quotes is recorded next to this (results/*.jsonl), so that a number can
be traced to a command, a machine and a commit, and rerun.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Dict

import torch

ROOT = Path(__file__).resolve().parents[2]


def cpu_model() -> str:
    """The CPU's marketing name (Linux's /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """CHORD_COMMIT if set (a copy of the tree without its .git), else git's HEAD, marked
    "+dirty" when the tree has uncommitted changes to tracked files. results/ does not count:
    a run that appends to a results file there changes no code."""
    if os.environ.get("CHORD_COMMIT"):
        return os.environ["CHORD_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "-uno", "--", ".", ":(exclude)results"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown (no git)"
    if head.returncode != 0:
        return "unknown (no git)"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def cpu_kernels() -> str:
    """Which vectorised kernels compute here: ATen's CPU capability (ATEN_CPU_CAPABILITY can
    lower it), and MKL's code path where MKL_CBWR / MKL_ENABLE_INSTRUCTIONS pin one. Two CPU
    kinds round differently mostly because they run different kernels; pinning these on one
    machine reproduces that (the demo's cross-kernel check, README)."""
    pinned = [f"{k}={os.environ[k]}" for k in ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS") if os.environ.get(k)]
    return " ".join([f"ATen {torch.backends.cpu.get_cpu_capability()}", *pinned])


def rounding_kind() -> str:
    """What the bits of a computation here depend on beyond its inputs: the GPU model on a GPU,
    else the CPU model and its kernels (the machine kind that results.machine_kind reads from a
    record)."""
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    return f"{cpu_model()} / {cpu_kernels()}"


def trainer_threads(cpu_threads: int) -> int:
    """The torch threads a trainer started with train.cpu_threads=N runs on: N, or torch's
    default (this process's) when N is 0 or a GPU makes the setting moot."""
    return cpu_threads if cpu_threads and not torch.cuda.is_available() else torch.get_num_threads()


def provenance() -> Dict[str, object]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "cpu": cpu_model(),
        "kernels": cpu_kernels(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
