"""TrainBatch assembly: label alignment, masks, padding and the expert share."""

import pytest
import torch

from chord_megatron.data.batch import build_train_batch, expert_rows_per_step
from chord_megatron.data.jsonl import ExpertRow
from chord_megatron.types import Rollout


def test_alignment_masks_and_padding():
    r = Rollout(prompt_ids=[5, 6, 7], response_ids=[8, 9], logprobs=[-0.5, -0.25], finish_reason="stop")
    e = ExpertRow(prompt_ids=[5, 6], response_ids=[10, 11, 12, 2])
    b = build_train_batch([r], torch.tensor([1.5]), [e], pad_id=0)
    # row 0: seq 5 6 7 8 9 -> inputs 5 6 7 8, labels 6 7 8 9; responses are labels at 2..3
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 0], [5, 6, 10, 11, 12]]
    assert b.labels.tolist() == [[6, 7, 8, 9, 0], [6, 10, 11, 12, 2]]
    assert b.loss_mask.tolist() == [[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]]
    assert b.rollout_logp[0].tolist() == [0, 0, -0.5, -0.25, 0]
    assert b.is_expert.tolist() == [False, True] and b.advantages.tolist() == [1.5, 0.0]
    # the labels under the mask are exactly the responses
    for i, resp in enumerate([[8, 9], [10, 11, 12, 2]]):
        assert b.labels[i][b.loss_mask[i].bool()].tolist() == resp


def test_fixed_seq_length_and_errors():
    r = Rollout([1, 2], [3, 4, 5], [-1.0, -1.0, -1.0], "length")
    b = build_train_batch([r], torch.zeros(1), [], pad_id=0, seq_length=8)
    assert b.input_ids.shape == (1, 8)
    with pytest.raises(ValueError, match="more than seq_length"):
        build_train_batch([r], torch.zeros(1), [], pad_id=0, seq_length=3)
    with pytest.raises(ValueError, match="log-probs"):
        build_train_batch([Rollout([1], [2, 3], [-1.0], "stop")], torch.zeros(1), [], pad_id=0)
    with pytest.raises(ValueError, match="advantages"):
        build_train_batch([r], torch.zeros(2), [], pad_id=0)


def test_expert_only_batch_has_no_rollout_logp():
    b = build_train_batch([], torch.zeros(0), [ExpertRow([1, 2], [3, 2])], pad_id=0)
    assert b.rollout_logp is None and b.is_expert.all()


def test_expert_share_matches_the_paper():
    assert expert_rows_per_step(256, 0.2, pure_sft_rows=0) == 64  # 32 prompts x 8, math setting
    assert expert_rows_per_step(768, 96 / 864, pure_sft_rows=0) == 96  # tool use: 96 per 96 x 8
    assert expert_rows_per_step(64, 0.0, pure_sft_rows=0) == 0
    assert expert_rows_per_step(64, 1.0, pure_sft_rows=16) == 16
