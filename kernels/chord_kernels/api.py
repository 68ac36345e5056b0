"""The public entry point: shape handling, validation and dispatch to one implementation."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist

from .launch import LaunchConfig

IMPLS = ("auto", "triton", "chunked", "reference")


def vocab_parallel_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    vocab_start: int,
    temperature: float = 1.0,
    tp_group: Optional[dist.ProcessGroup] = None,
    with_entropy: bool = True,
    impl: str = "auto",
    inplace_backward: bool = False,
    launch: Optional[LaunchConfig] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-token log p(target) and entropy of softmax(logits / temperature) over a sharded vocabulary.

    Args:
        logits: [..., V_local] fp32/bf16/fp16, this rank's vocabulary shard (last dim may be
            strided). Global column `vocab_start + j` is local column j.
        targets: [...] int32/int64 global vocabulary ids, same leading shape as `logits`.
        vocab_start: global id of this shard's first column (Megatron: rank * V_local for even
            shards); uneven shards are fine as long as the ranks' shards tile [0, V_global).
        temperature: > 0; softmax is taken over logits / temperature.
        tp_group: the tensor-parallel group the vocabulary is split over, or None (one shard
            holds the whole vocabulary). The forward does one MAX and one SUM all-reduce of small
            [N]-sized tensors; the backward does no communication.
        with_entropy: also return H = -sum_j p_j log p_j (otherwise None, and cheaper).
        impl: "triton" (CUDA, or CPU under TRITON_INTERPRET=1), "chunked" (torch, bounded
            memory), "reference" (naive oracle), or "auto" = triton on CUDA tensors, else chunked.
        inplace_backward: let backward write the gradient over the `logits` buffer (saves one
            [N, V_local] allocation). Only safe when nothing else needs the logits' values after
            this op's backward; ignored by the reference.
        launch: impl="triton" only: a `LaunchConfig` (rows per program, tile width, warps,
            pipelining stages, per-lane accumulators); None = `launch.default_launch`.

    Returns:
        (logp, entropy): fp32 tensors of shape [...] (entropy is None when with_entropy=False),
        identical on every rank of `tp_group`.

    Targets outside [0, V_global) -- e.g. an ignore_index of -100 on padding -- are not an error
    (checking would cost a host sync): their logp is 0, they get no log-prob gradient, and their
    entropy is computed normally. Logits must be finite.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets {tuple(targets.shape)} must match logits {tuple(logits.shape)} minus the last dim")
    if not logits.is_floating_point() or targets.is_floating_point() or targets.is_complex():
        raise TypeError("logits must be floating point and targets integer")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape[-1] == 0:
        raise ValueError("empty vocabulary shard")
    if impl == "auto":
        impl = "triton" if logits.is_cuda else "chunked"
    if launch is not None and impl != "triton":
        raise ValueError(f"launch= configures the Triton kernels; impl resolved to {impl!r}")
    if impl == "reference":
        from .reference import reference_vocab_parallel_logprobs

        return reference_vocab_parallel_logprobs(
            logits,
            targets,
            vocab_start=vocab_start,
            temperature=temperature,
            tp_group=tp_group,
            with_entropy=with_entropy,
        )

    lead = targets.shape
    # A view when possible, so that in-place backward lands in the caller's buffer.
    x = logits.reshape(-1, logits.shape[-1])
    t = targets.reshape(-1)
    args = (x, t, int(vocab_start), float(temperature), tp_group, bool(with_entropy), bool(inplace_backward))
    if impl == "triton":
        from . import triton_logprobs  # lazy: needs triton, and a GPU or TRITON_INTERPRET=1

        if not x.is_cuda and not triton_logprobs.is_interpreted():
            raise RuntimeError(
                "impl='triton' on CPU tensors needs TRITON_INTERPRET=1 set before chord_kernels.triton_logprobs "
                "is first imported; use impl='chunked' on CPU"
            )
        logp, ent = triton_logprobs.TritonVocabParallelLogprobs.apply(*args, launch)
    else:
        from .chunked import DEFAULT_CHUNK_ROWS, ChunkedVocabParallelLogprobs

        logp, ent = ChunkedVocabParallelLogprobs.apply(*args, DEFAULT_CHUNK_ROWS)
    return logp.view(lead), (ent.view(lead) if with_entropy else None)
