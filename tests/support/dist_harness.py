"""Run a function on N local processes that form a torch.distributed world (gloo on CPU).

    results = run_job(worker_fn, world=2, args=(...,))   # [rank 0's return value, rank 1's, ...]

Each process gets torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
LOCAL_RANK), one intra-op thread (the machines have 2 cores), and returns its result through
a file. A worker that raises fails the job with its traceback; a job that outlives `timeout`
is killed (only the processes it started) and fails.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from typing import Any, Callable, List, Sequence

import torch
import torch.multiprocessing as mp

from chord_megatron.net import free_port


def _entry(rank: int, world: int, port: int, fn: Callable, args: Sequence, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    try:
        result = fn(*args)
    finally:
        from chord_megatron.train.parallel import destroy_parallel

        destroy_parallel()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def run_job(fn: Callable, *, world: int, args: Sequence = (), timeout: float = 180.0) -> List[Any]:
    """fn(*args) on `world` processes; returns the per-rank results in rank order."""
    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.start_processes(
            _entry, args=(world, free_port(), fn, tuple(args), out_dir), nprocs=world, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{getattr(fn, '__name__', fn)} on {world} processes took over {timeout} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                    p.join()
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]
