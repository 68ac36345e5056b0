"""What train/compat/ relies on in megatron-core 0.16.1 and torch 2.13's private APIs: a release
that changes any of it fails here first. A version bump starts here (and in
test_compat_cpu_patches.py, the CPU patches' own pins, which run only without CUDA).

* cp_config.py / train/cp_attention.py: the local DotProductAttention refuses CP and reads only
  sizes from it; RoPE slices positions in the zigzag layout we split by (numerics are tested in
  tests/dist/test_train_layouts.py). Re-check the stand-in, or drop it if local attention has
  learnt context parallelism.
* optimizer_load.py: the fully_reshardable step workaround and the Megatron code behind it.
* finalize_grads.py: finalize_model_grads divides by num_tokens only when given them.
* process_group.py: torch's private c10d helpers keep the signature we call.
* ckpt_warnings.py: the FutureWarnings it silences are still the ones a load prints.
"""

import inspect

import torch

from chord_megatron.train.compat.cpu_patches import PINNED_MEGATRON_CORE, apply_cpu_patches, installed_megatron_version
from chord_megatron.train.cp_attention import zigzag_positions


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
    assert list(forward.parameters)[:8] == [
        "self",
        "query",
        "key",
        "value",
        "attention_mask",
        "attn_mask_type",
        "attention_bias",
        "packed_seq_params",
    ]


def test_rope_slices_positions_in_the_zigzag_layout_we_split_by():
    from megatron.core.models.common.embeddings import rope_utils

    apply_cpu_patches()  # RoPE's helper pins an index tensor and moves it to CUDA
    positions = torch.arange(24)
    for rank in range(3):
        got = rope_utils.get_pos_emb_on_this_cp_rank(positions, 0, _Group(3, rank))
        assert torch.equal(got, zigzag_positions(24, 3, rank))


def test_the_megatron_code_behind_the_fully_reshardable_step_workaround_is_unchanged():
    """compat/optimizer_load.step_passed_through exists because megatron-core 0.16.1 (1) puts torch Adam's
    "step" into every per-parameter state on load, (2) leaves "step" out of what it hands
    _set_main_param_and_optimizer_states, which (3) copies every destination key. If a release
    changes any of these, this fails: re-check the workaround (and drop it when fixed)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    assert installed_megatron_version() == PINNED_MEGATRON_CORE
    load = inspect.getsource(DistributedOptimizer.load_state_dict)
    assert 's["step"] = step' in load
    reshardable = inspect.getsource(DistributedOptimizer.load_parameter_state_from_fully_reshardable)
    assert 'if k == "step":' in reshardable and "continue" in reshardable
    setter = inspect.getsource(DistributedOptimizer._set_main_param_and_optimizer_states)
    assert "for key in dst_tensors:" in setter and "dst_tensors[key].copy_(tensors[key])" in setter


def test_step_passed_through_hands_the_destination_step_and_cleans_up():
    """The workaround on a stand-in optimizer: the wrapped setter receives "step" (the
    destination's own tensor) only when it was missing, and the instance is restored."""
    from chord_megatron.train.compat.optimizer_load import step_passed_through

    class Inner:
        def __init__(self):
            self.main = torch.zeros(2)
            self.param_groups = [{"params": [self.main]}]
            self.state = {self.main: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(2)}}

    class FakeDistOpt:
        def __init__(self):
            self.optimizer = Inner()
            self.model_param_group_index_map = {"p": (0, 0)}
            self.seen = []

        def _set_main_param_and_optimizer_states(self, model_param, tensors):
            self.seen.append(dict(tensors))

    opt = FakeDistOpt()
    with step_passed_through(opt):
        opt._set_main_param_and_optimizer_states("p", {"exp_avg": torch.ones(2)})
        opt._set_main_param_and_optimizer_states("p", {"exp_avg": torch.ones(2), "step": torch.tensor(9.0)})
    assert opt.seen[0]["step"] is opt.optimizer.state[opt.optimizer.main]["step"]
    assert float(opt.seen[1]["step"]) == 9.0
    assert "_set_main_param_and_optimizer_states" not in vars(opt)


def test_finalize_model_grads_divides_only_when_given_a_token_count():
    """compat/finalize_grads.py passes num_tokens=None so that Megatron does not divide our
    already token-normalised gradients."""
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads

    assert installed_megatron_version() == PINNED_MEGATRON_CORE
    assert list(inspect.signature(finalize_model_grads).parameters) == [
        "model",
        "num_tokens",
        "pg_collection",
        "force_all_reduce",
    ]
    src = inspect.getsource(finalize_model_grads)
    assert "if num_tokens is not None:" in src and "scaling = 1.0 / num_tokens" in src


def test_private_process_group_helpers_keep_their_signature():
    """compat/process_group.py forms SGLang's weight-update group with torch's private helpers."""
    from torch.distributed import distributed_c10d as c10d

    params = list(inspect.signature(c10d._new_process_group_helper).parameters)
    assert params[:8] == [
        "group_size",
        "group_rank",
        "global_ranks_in_group",
        "backend",
        "store",
        "group_name",
        "backend_options",
        "timeout",
    ]
    assert isinstance(c10d._world.pg_group_ranks, dict)
    assert callable(c10d.rendezvous) and callable(c10d.PrefixStore)


def test_the_checkpoint_load_warnings_we_silence_are_still_printed():
    """ckpt_warnings.py filters these by message; once megatron-core stops calling the deprecated
    loader or torch drops the ShardedTensor warning, the filter (and this test) go."""
    import re

    import megatron.core.dist_checkpointing.strategies.torch as strategy
    import torch.distributed.checkpoint as dcp
    from torch.distributed._shard._utils import DEPRECATE_MSG

    from chord_megatron.train.compat.ckpt_warnings import LOAD_WARNINGS

    assert inspect.getsource(strategy).count("checkpoint.load_state_dict(") == 1
    assert re.fullmatch(LOAD_WARNINGS[0], dcp.load_state_dict.__deprecated__)
    assert re.fullmatch(LOAD_WARNINGS[1], DEPRECATE_MSG)
