"""chord_kernels: fused vocabulary-parallel log p(target) and entropy for RL post-training.

Public entry point: `vocab_parallel_logprobs`. The Triton module is imported only when the Triton
path is used, so importing this package needs neither Triton nor a GPU.
"""
from .api import IMPLS, vocab_parallel_logprobs

__all__ = ["IMPLS", "vocab_parallel_logprobs"]
