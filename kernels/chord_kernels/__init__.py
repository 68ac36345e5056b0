"""chord_kernels: fused vocabulary-parallel log p(target) and entropy for RL post-training.

Public entry point: `vocab_parallel_logprobs`; a `LaunchConfig` tunes the Triton launch. The Triton
module is imported only when the Triton path is used, so importing this package needs neither
Triton nor a GPU.
"""

from .api import IMPLS, vocab_parallel_logprobs
from .launch import LaunchConfig, default_launch

__all__ = ["IMPLS", "LaunchConfig", "default_launch", "vocab_parallel_logprobs"]
