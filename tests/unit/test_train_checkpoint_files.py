"""The checkpoint root's bookkeeping: the `latest` pointer, resolution and keep_last pruning."""
import os

import pytest

from chord_megatron.train import checkpoint as ckpt


def _fake_checkpoint(root, step):
    path = os.path.join(root, ckpt.step_dirname(step))
    os.makedirs(path)
    open(os.path.join(path, "metadata.json"), "w").close()
    return path


def test_latest_pointer_and_resolution(tmp_path):
    root = str(tmp_path)
    first = _fake_checkpoint(root, 3)
    second = _fake_checkpoint(root, 10)
    with pytest.raises(FileNotFoundError, match="latest"):
        ckpt.resolve_checkpoint(root)
    ckpt._write_latest(root, ckpt.step_dirname(3))
    assert ckpt.resolve_checkpoint(root) == first  # the pointer wins over the newest directory
    ckpt._write_latest(root, ckpt.step_dirname(10))
    assert ckpt.resolve_checkpoint(root) == second
    assert ckpt.resolve_checkpoint(first) == first  # a checkpoint directory itself
    assert not os.path.exists(os.path.join(root, "latest.tmp"))


def test_prune_keeps_the_newest_and_the_one_just_written(tmp_path):
    root = str(tmp_path)
    for step in (1, 2, 10, 11):
        _fake_checkpoint(root, step)
    os.makedirs(os.path.join(root, ".tmp.step_00000012"))  # an unfinished save is not a checkpoint
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [1, 2, 10, 11]
    ckpt._prune(root, keep_last=2, keep=ckpt.step_dirname(11))
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [10, 11]
    # Re-saving an old step (e.g. after a rollback) must not delete what was just written.
    _fake_checkpoint(root, 5)
    ckpt._prune(root, keep_last=1, keep=ckpt.step_dirname(5))
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [5, 11]
    assert ckpt.list_checkpoints(os.path.join(root, "missing")) == []


def test_the_megatron_code_behind_the_fully_reshardable_step_workaround_is_unchanged():
    """checkpoint._step_passed_through exists because megatron-core 0.16.1 (1) puts torch Adam's
    "step" into every per-parameter state on load, (2) leaves "step" out of what it hands
    _set_main_param_and_optimizer_states, which (3) copies every destination key. If a release
    changes any of these, this fails: re-check the workaround (and drop it when fixed)."""
    import inspect

    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    from chord_megatron.train.cpu_patches import PINNED_MEGATRON_CORE, installed_megatron_version

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
    import torch

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
    with ckpt._step_passed_through(opt):
        opt._set_main_param_and_optimizer_states("p", {"exp_avg": torch.ones(2)})
        opt._set_main_param_and_optimizer_states("p", {"exp_avg": torch.ones(2), "step": torch.tensor(9.0)})
    assert opt.seen[0]["step"] is opt.optimizer.state[opt.optimizer.main]["step"]
    assert float(opt.seen[1]["step"]) == 9.0
    assert "_set_main_param_and_optimizer_states" not in vars(opt)
