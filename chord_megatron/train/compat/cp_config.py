"""The config our context-parallel local attention hands its Megatron base class (0.16.1).

megatron-core's DotProductAttention refuses context_parallel_size > 1 and otherwise reads only
sizes from the config; train/cp_attention.py does the context parallelism itself, so its base
class gets a copy that says 1. tests/unit/test_compat_pins.py pins both facts.
"""

from __future__ import annotations

import copy


def without_context_parallelism(config):
    """A shallow copy of a TransformerConfig with context_parallel_size = 1 (the copy skips
    TransformerConfig's validation, which already ran on the original)."""
    local = copy.copy(config)
    local.context_parallel_size = 1
    return local
