"""Colocated SGLang servers and the trainer take turns with GPU memory (rollout.release_sglang_memory).

Without it, GPU 0 holds at once the trainer's persistent state, its activations (kept in
torch's cache after the first step), SGLang's static pool (mem_fraction_static) and SGLang's
dynamic memory. With it, the servers free their KV cache pool (and their weights, when a sync
follows the step and overwrites them anyway) before the train step, and every trainer rank
hands its freed activations back to the driver after it, so the two peaks never meet; the
servers take their memory back when they next need it (SGLangEngine: the weights at the next
weight update, the KV cache at the next generate). commands/launch/memory.py counts it so.

The driver calls, on every rank, around its train step:

    release_rollout_memory(cfg, rollout, sync_follows=...)   # rank 0's engine; None elsewhere
    engine.train_step(...)
    return_training_memory(cfg)
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def release_rollout_memory(cfg, rollout, *, sync_follows: bool) -> None:
    """Before a train step: rank 0's rollout engine (None on the other ranks) releases the
    servers' KV cache, and their weights when `sync_follows` (a weight sync right after this
    step refills them; without one they would be lost). Every rank then waits for rank 0, so
    that no rank allocates training memory on a GPU a server still holds. Off: nothing."""
    if not cfg.rollout.release_sglang_memory:
        return
    if rollout is not None:
        rollout.release_memory(("kv_cache", "weights") if sync_follows else ("kv_cache",))
    _barrier()


def return_training_memory(cfg, device: Optional[torch.device] = None) -> None:
    """After a train step: every rank returns its cached-but-free memory (activations, logits)
    to the driver, then waits for the others, so that a server resuming its memory on any GPU
    finds it free. Off: nothing (the cache keeps serving the next step faster)."""
    if not cfg.rollout.release_sglang_memory:
        return
    if torch.cuda.is_available():
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    _barrier()


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
