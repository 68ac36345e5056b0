"""Combining chord_loss metrics over micro-batches must equal the metrics of the whole batch."""

import pytest
import torch

from chord_megatron.algo import chord_loss
from chord_megatron.train.metrics import RL_MEANS, SFT_MEANS, SUMMED, from_sums, logprob_mismatch, metric_keys, to_sums

KW = dict(clip_low=0.2, clip_high=0.2, dual_clip=3.0, token_weight="p1mp", tis_cap=None, logratio_clamp=20.0)


def _case(seed=0, B=6, T=5):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g) * 3
    old = logp + 0.3 * torch.randn(B, T, generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).float()
    is_expert = torch.tensor([0, 1, 0, 1, 1, 0], dtype=torch.bool)
    adv = torch.randn(B, generator=g)
    entropy = torch.rand(B, T, generator=g) * 4
    return logp, old, adv, mask, is_expert, entropy


def test_keys_cover_what_chord_loss_reports():
    keys = metric_keys(KW)
    assert set(keys) <= set(SUMMED + RL_MEANS + SFT_MEANS)
    assert {"loss", "sft_nll", "clip_frac", "entropy_rl", "entropy_sft"} <= set(keys)
    assert "tis_weight_mean" in metric_keys({**KW, "tis_cap": 2.0})


@pytest.mark.parametrize("split", [[0, 6], [0, 2, 6], [0, 1, 3, 6], [0, 2, 4, 6]])
def test_count_weighted_combination_equals_whole_batch(split):
    logp, old, adv, mask, is_expert, entropy = _case()
    keys = metric_keys(KW)
    rl = (mask.bool() & ~is_expert[:, None]).sum()
    sft = (mask.bool() & is_expert[:, None]).sum()
    denominators = {"rl": rl, "sft": sft}
    _, whole = chord_loss(logp, old, adv, mask, is_expert, 0.3, entropy=entropy, **KW)
    total = torch.zeros(len(keys), dtype=torch.float64)
    for a, b in zip(split[:-1], split[1:]):
        _, part = chord_loss(
            logp[a:b],
            old[a:b],
            adv[a:b],
            mask[a:b],
            is_expert[a:b],
            0.3,
            entropy=entropy[a:b],
            denominators=denominators,
            **KW,
        )
        total += to_sums(part, keys).double()
    combined = from_sums(total, keys)
    for k in keys:
        assert combined[k] == pytest.approx(float(whole[k]), rel=1e-6, abs=1e-7), k


def test_empty_row_kind_gives_zero_not_nan():
    keys = metric_keys(KW)
    combined = from_sums(torch.zeros(len(keys)), keys)
    assert all(v == 0.0 for v in combined.values())


def test_logprob_mismatch_over_masked_tokens_only():
    trainer = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    rollout = torch.tensor([[-1.5, -2.0, -9.0], [-0.9, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    m = logprob_mismatch(trainer, rollout, mask)
    assert m["logp_mismatch_mean"] == pytest.approx((0.5 + 0.0 + 0.1) / 3)
    assert m["logp_mismatch_max"] == pytest.approx(0.5)
    assert m["logp_mismatch_tokens"] == 3
    assert logprob_mismatch(trainer, rollout, torch.zeros(2, 3))["logp_mismatch_max"] == 0.0
