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
