"""Logits of a vocabulary shard -> per-token log-probs and entropies, at the rollout temperature.

The math lives in `chord_kernels.vocab_parallel_logprobs` (a fused Triton kernel on GPU, a
chunked torch path on CPU); this module only supplies what Megatron knows: which slice of the
vocabulary this tensor-parallel rank holds, and the group to reduce over. Full-vocabulary
logits are never gathered.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist


def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    tp_group: Optional[dist.ProcessGroup],
    temperature: float = 1.0,
    impl: str = "auto",
    with_entropy: bool = True,
    inplace_backward: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """log softmax(logits / T)[labels] and the entropy of softmax(logits / T), fp32.

    logits: [B, S, V_local], this rank's even shard of the vocabulary (Megatron's
      vocab-parallel output layer: rank r holds ids [r * V_local, (r + 1) * V_local)).
    labels: [B, S] global token ids; ids outside the vocabulary (padding) give logp = 0.
    tp_group: the tensor-parallel group the vocabulary is split over (None or size 1: whole).
    temperature: the rollout engine's sampling temperature, so that trainer and engine
      log-probs are comparable (SGLang reports temperature-scaled log-probs).
    inplace_backward: the backward may overwrite `logits` (safe when, as after Megatron's
      output layer, nothing else reads the logits afterwards).
    Returns (logp [B, S], entropy [B, S] or None), identical on every rank of `tp_group`.
    """
    from chord_kernels import vocab_parallel_logprobs

    tp_size = 1 if tp_group is None else dist.get_world_size(tp_group)
    tp_rank = 0 if tp_group is None else dist.get_rank(tp_group)
    return vocab_parallel_logprobs(
        logits,
        labels,
        vocab_start=tp_rank * logits.shape[-1],
        temperature=temperature,
        tp_group=tp_group if tp_size > 1 else None,
        with_entropy=with_entropy,
        impl=impl,
        inplace_backward=inplace_backward,
    )
