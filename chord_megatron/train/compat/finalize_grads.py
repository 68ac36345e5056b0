"""Megatron's gradient finalisation without its per-token division (megatron-core 0.16.1).

With `calculate_per_token_loss` Megatron's finalize_model_grads divides every gradient by the
global number of tokens it counted; our loss already is a token mean over the *global* counts
of each row kind (train/step.py), so the division is skipped by handing it no token count.
"""

from __future__ import annotations


def finalize_grads_without_token_division(model, num_tokens, pg_collection=None, force_all_reduce=False):
    """TransformerConfig.finalize_model_grads_func: all-reduce and finalise, never divide."""
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads

    finalize_model_grads(model, None, pg_collection=pg_collection, force_all_reduce=force_all_reduce)
