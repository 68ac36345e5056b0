"""train/cp_attention.py subclasses megatron-core's local DotProductAttention (numerics are tested
in tests/dist/test_train_layouts.py). These pin what the subclass relies on in 0.16.1; a release
that changes them fails here first: re-check the stand-in, or drop it if local attention has
learnt context parallelism."""
import inspect

import torch

from chord_megatron.train.cp_attention import zigzag_positions
from chord_megatron.train.cpu_patches import PINNED_MEGATRON_CORE, apply_cpu_patches, installed_megatron_version


class _Group:
    """What get_pos_emb_on_this_cp_rank reads of a process group."""

    def __init__(self, size, rank):
        self._size, self._rank = size, rank

    def size(self):
        return self._size

    def rank(self):
        return self._rank


def test_local_attention_still_refuses_context_parallelism_and_reads_only_sizes_from_it():
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    assert installed_megatron_version() == PINNED_MEGATRON_CORE
    init = inspect.getsource(DotProductAttention.__init__)
    assert "Context parallelism is only supported by TEDotProductAttention" in init
    # the stand-in hands the parent a config copy saying CP = 1; nothing else may read CP there
    assert init.count("context_parallel_size") == 1
    forward = inspect.signature(DotProductAttention.forward)
    assert list(forward.parameters)[:8] == ["self", "query", "key", "value", "attention_mask", "attn_mask_type",
                                            "attention_bias", "packed_seq_params"]  # fmt: skip


def test_rope_slices_positions_in_the_zigzag_layout_we_split_by():
    from megatron.core.models.common.embeddings import rope_utils

    apply_cpu_patches()  # RoPE's helper pins an index tensor and moves it to CUDA
    positions = torch.arange(24)
    for rank in range(3):
        got = rope_utils.get_pos_emb_on_this_cp_rank(positions, 0, _Group(3, rank))
        assert torch.equal(got, zigzag_positions(24, 3, rank))
