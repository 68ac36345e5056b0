"""Global batch -> data-parallel shards -> micro-batches, and the global token counts."""

import pytest
import torch

from chord_megatron.train.batching import (
    check_batch,
    count_tokens,
    dp_row_range,
    micro_batch_rows,
    micro_batches,
    pad_rows,
    rows_per_rank,
    shard_for_rank,
)
from chord_megatron.types import TrainBatch


def batch(rows=7, S=5, with_logp=True):
    mask = torch.zeros(rows, S)
    mask[:, 1:4] = 1
    mask[0, 3] = 0
    return TrainBatch(
        input_ids=torch.arange(rows * S).view(rows, S),
        labels=torch.arange(rows * S).view(rows, S) + 1,
        loss_mask=mask,
        is_expert=torch.tensor([i % 3 == 1 for i in range(rows)]),
        advantages=torch.arange(rows, dtype=torch.float32) + 1,
        old_logp=-torch.ones(rows, S) if with_logp else None,
    )


def test_token_counts_per_row_kind():
    b = batch()
    # rows 1 and 4 are expert (3 tokens each); rows 0 (2 tokens), 2, 3, 5, 6 are on-policy
    assert count_tokens(b).rl == 2 + 3 * 4 and count_tokens(b).sft == 6
    assert count_tokens(b).as_denominators() == {"rl": 14.0, "sft": 6.0}


@pytest.mark.parametrize("rows,dp", [(7, 2), (8, 2), (9, 4), (4, 4)])
def test_dp_blocks_tile_the_batch_and_differ_by_at_most_one(rows, dp):
    blocks = [dp_row_range(rows, dp, r) for r in range(dp)]
    covered = [i for s in blocks for i in range(rows)[s]]
    assert covered == list(range(rows))
    sizes = [len(range(rows)[s]) for s in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_too_few_rows_for_dp_is_an_error():
    with pytest.raises(ValueError, match="3 rows cannot feed 4"):
        dp_row_range(3, 4, 0)


def test_padding_rows_are_inert():
    b = pad_rows(batch(), 9)
    assert b.rows == 9
    assert b.loss_mask[7:].sum() == 0 and not b.is_expert[7:].any() and (b.advantages[7:] == 0).all()
    assert count_tokens(b) == count_tokens(batch())
    assert pad_rows(batch(with_logp=False), 9).old_logp is None


def test_every_rank_gets_the_same_number_of_equal_micro_batches():
    b = batch(rows=7)
    assert rows_per_rank(7, 2, 2) == 4
    shards = [shard_for_rank(b, dp=2, dp_rank=r, micro_batch_size=2) for r in range(2)]
    assert [len(s) for s in shards] == [2, 2]
    assert all(mb.input_ids.shape == (2, 5) for s in shards for mb in s)
    # Real rows in order, then the padding row at the end of the short shard.
    ids = torch.cat([mb.input_ids for s in shards for mb in s])
    assert torch.equal(ids[:4], b.input_ids[:4]) and torch.equal(ids[4:7], b.input_ids[4:7])
    assert ids[7].sum() == 0
    assert sum(count_tokens(mb).rl for s in shards for mb in s) == count_tokens(b).rl


def test_micro_batches_are_as_few_as_fit_and_evenly_filled():
    # (rows, dp, micro_batch_size) -> rows per micro-batch: no inert rows beyond what the
    # largest rank block needs to split into equal micro-batches.
    assert micro_batch_rows(32, 1, 64) == 32  # one micro-batch of 32, not 64 with 32 inert
    assert micro_batch_rows(9, 1, 4) == 3  # 3 x 3 rather than 3 x 4
    assert micro_batch_rows(7, 2, 2) == 2
    assert micro_batch_rows(10, 1, 4) == 4  # 3 micro-batches either way; 4+4+2 -> padded 12
    assert rows_per_rank(32, 1, 64) == 32 and rows_per_rank(9, 1, 4) == 9 and rows_per_rank(10, 1, 4) == 12
    shards = shard_for_rank(batch(rows=9), dp=1, dp_rank=0, micro_batch_size=4)
    assert [mb.rows for mb in shards] == [3, 3, 3]
    assert torch.equal(torch.cat([mb.input_ids for mb in shards]), batch(rows=9).input_ids)


def test_micro_batches_need_whole_multiples():
    with pytest.raises(ValueError, match="do not split"):
        micro_batches(batch(rows=7), 2)
    assert [mb.rows for mb in micro_batches(batch(rows=6), 3)] == [3, 3]


def test_check_batch_names_the_bad_field():
    check_batch(batch())
    b = batch()
    b.old_logp = torch.zeros(7, 4)
    with pytest.raises(ValueError, match="old_logp"):
        check_batch(b)
    b = batch()
    b.advantages = torch.zeros(7, 5)
    with pytest.raises(ValueError, match="advantages"):
        check_batch(b)
    b = batch()
    b.input_ids = b.input_ids.float()
    with pytest.raises(ValueError, match="integer"):
        check_batch(b)
