"""Sequence packing and the context-parallel split: the token maps between the rows' layout and
the model's, checked against brute-force re-derivations."""

import itertools

import pytest
import torch

from chord_megatron.train.cp_attention import zigzag_positions
from chord_megatron.train.micro_batch import build_micro_batches
from chord_megatron.train.packing import block_causal_mask, cu_seqlens, plan_packs, trained_lengths
from chord_megatron.types import TrainBatch


def ragged_batch(rows=9, S=12, seed=0):
    """Rows with prompts of 2-4 tokens and 0-7 trained tokens (row 3 trains nothing)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (rows, S), generator=g)
    mask = torch.zeros(rows, S)
    for r in range(rows):
        prompt, resp = 2 + r % 3, (0 if r == 3 else 1 + (r * 5) % 8)
        mask[r, prompt - 1 : prompt - 1 + resp] = 1
        ids[r, prompt + resp :] = 0
    labels = torch.roll(ids, -1, 1)
    return TrainBatch(
        input_ids=ids,
        labels=labels,
        loss_mask=mask,
        is_expert=torch.arange(rows) % 2 == 0,
        advantages=torch.randn(rows, generator=g),
        old_logp=torch.randn(rows, S, generator=g),
    )


def test_trained_lengths_end_at_the_last_trained_token():
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 1]])
    assert trained_lengths(mask) == [3, 0, 5]


def test_plan_packs_first_fit_decreasing():
    lengths = [5, 3, 0, 4, 2, 6, 1]
    packs = plan_packs(lengths, 7)
    # longest first: 6 -> [5]; 5 -> [0]; 4 -> [3]; 3 -> with 4 ([3, 1]); 2 -> with 5; 1 -> with 6
    assert packs == [[5, 6], [0, 4], [1, 3]]
    assert sorted(r for p in packs for r in p) == [0, 1, 3, 4, 5, 6]  # row 2 trains nothing
    assert all(sum(lengths[r] for r in p) <= 7 for p in packs)


def test_plan_packs_names_the_row_that_does_not_fit():
    with pytest.raises(ValueError, match=r"train.pack_length=4 is shorter than row 1, which needs 5 tokens"):
        plan_packs([3, 5], 4)


def test_block_causal_mask_against_definition():
    seg = torch.tensor([[0, 0, 0, 1, 1, -1], [2, 2, 2, 2, 2, 2]])
    mask = block_causal_mask(seg)
    assert mask.shape == (2, 1, 6, 6)
    for b, q, k in itertools.product(range(2), range(6), range(6)):
        allowed = seg[b, q] == seg[b, k] and k <= q
        assert bool(mask[b, 0, q, k]) == (not allowed), (b, q, k)


def test_cu_seqlens_mark_every_segment_of_the_flattened_rows():
    seg = torch.tensor([[0, 0, 1, 1, 1, -1], [2, 2, 2, 2, 2, 2]])
    assert cu_seqlens(seg).tolist() == [0, 2, 5, 6, 12]
    assert cu_seqlens(seg).dtype == torch.int32


@pytest.mark.parametrize("cp", [1, 2, 3])
def test_zigzag_positions_partition_and_balance(cp):
    L = 12 * cp
    parts = [zigzag_positions(L, cp, r) for r in range(cp)]
    assert sorted(torch.cat(parts).tolist()) == list(range(L))
    work = [int((p + 1).sum()) for p in parts]  # causal attention work ~ keys seen per query
    assert len(set(work)) == 1
    with pytest.raises(ValueError, match="divisible by"):
        zigzag_positions(L + 1, cp, 0) if cp > 1 else zigzag_positions(L + 1, 1, 0)


LAYOUTS = [
    dict(),
    dict(cp=2),
    dict(pack=True),
    dict(pack=True, pack_length=20),
    dict(pack=True, pack_length=20, cp=2),
    dict(pack=True, pack_length=13, cp=3),  # padded to 18 positions
]


@pytest.mark.parametrize("dp", [1, 2])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "plain")
def test_every_trained_token_is_computed_once_with_its_own_context(layout, dp):
    """Over all DP x CP ranks: each trained token of the batch appears exactly once in some
    model row, with the same input token and label, preceded in its model row by exactly its
    own row's earlier tokens (what attention may see under the block-diagonal mask)."""
    batch = ragged_batch()
    cp = layout.get("cp", 1)
    seen = torch.zeros(batch.rows, batch.input_ids.shape[1], dtype=torch.long)
    for dp_rank in range(dp):
        full = build_micro_batches(
            batch, dp=dp, dp_rank=dp_rank, micro_batch_size=2, seq_multiple=2 * cp, **{**layout, "cp": 1}
        )
        for cp_rank in range(cp):
            mbs = build_micro_batches(
                batch, dp=dp, dp_rank=dp_rank, micro_batch_size=2, cp_rank=cp_rank, seq_multiple=2 * cp, **layout
            )
            assert len(mbs) == len(full)
            for mb, whole in zip(mbs, full):
                b, L = whole.input_ids.shape
                assert mb.seq_length == L and L % (2 * cp) == 0 and mb.input_ids.shape == (b, L // cp)
                # the model input equals the rows' tokens wherever the map says so
                values = torch.arange(mb.input_ids.numel(), dtype=torch.float32).view_as(mb.input_ids)
                back = mb.to_rows(values)
                n, S = mb.rows.input_ids.shape
                present = mb.present() if mb.present() is not None else torch.ones(n, S, dtype=torch.bool)
                flat_ids, flat_labels = mb.input_ids.reshape(-1), mb.labels.reshape(-1)
                for r, t in zip(*torch.nonzero(present, as_tuple=True)):
                    i = int(back[r, t])
                    assert flat_ids[i] == mb.rows.input_ids[r, t] and flat_labels[i] == mb.rows.labels[r, t]
                    g = int(mb.row_ids[r])
                    if g >= 0 and mb.rows.loss_mask[r, t]:
                        seen[g, t] += 1
                if whole.segment_ids is not None:  # packed: each row's prefix is contiguous in its model row
                    seg = whole.segment_ids
                    for j in range(n):
                        where = torch.nonzero(seg == j)
                        assert len(set(where[:, 0].tolist())) == 1
                        cols = where[:, 1]
                        assert torch.equal(cols, torch.arange(int(cols[0]), int(cols[0]) + len(cols)))
                        assert torch.equal(whole.input_ids[where[0, 0], cols], mb.rows.input_ids[j, : len(cols)])
    assert torch.equal(seen, batch.loss_mask.long()), "every trained token exactly once"


def test_packing_saves_model_rows_and_keeps_row_order_recoverable():
    batch = ragged_batch()
    plain = build_micro_batches(batch, dp=1, dp_rank=0, micro_batch_size=1)
    packed = build_micro_batches(batch, dp=1, dp_rank=0, micro_batch_size=1, pack=True, pack_length=24)
    assert len(plain) == 9 and len(packed) < len(plain) // 2
    ids = torch.cat([mb.row_ids for mb in packed]).tolist()
    assert sorted(ids) == [r for r in range(9) if r != 3]  # row 3 trains nothing: not packed


def test_a_rank_without_trained_rows_still_runs_one_micro_batch():
    batch = ragged_batch(rows=4)
    batch.loss_mask.zero_()
    mbs = build_micro_batches(batch, dp=2, dp_rank=1, micro_batch_size=2, pack=True)
    assert len(mbs) == 1 and mbs[0].rows.rows == 0 and mbs[0].input_ids.shape == (1, 12)
    assert mbs[0].to_rows(torch.ones(1, 12)).shape == (0, 12)


def test_a_row_longer_than_pack_length_widens_the_model_rows():
    batch = ragged_batch()
    longest = max(trained_lengths(batch.loss_mask))
    mbs = build_micro_batches(batch, dp=1, dp_rank=0, micro_batch_size=2, pack=True, pack_length=4, seq_multiple=4)
    assert {mb.seq_length for mb in mbs} == {-(-longest // 4) * 4}
    assert sorted(torch.cat([mb.row_ids for mb in mbs]).tolist()) == [r for r in range(9) if r != 3]


@pytest.mark.parametrize("mbs,want", [(1, [1] * 4), (2, [2, 2]), (3, [2, 2]), (64, [4])])
def test_packs_are_spread_evenly_over_as_few_micro_batches_as_allowed(mbs, want):
    batch = ragged_batch()
    n_packs = len(plan_packs(trained_lengths(batch.loss_mask), 12))
    assert n_packs == 4
    got = build_micro_batches(batch, dp=1, dp_rank=0, micro_batch_size=mbs, pack=True)
    assert [mb.micro_batch_size for mb in got] == want
    # no empty model rows
    assert sum(int((mb.segment_ids >= 0).any(1).sum()) for mb in got) == n_packs
