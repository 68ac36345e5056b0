"""GRPO advantages against numpy re-derivations and a hand-worked case."""

import numpy as np
import pytest
import torch

from chord_megatron.algo import group_advantages


def test_hand_worked_group_of_two():
    # group [1, 0]: mean 0.5, unbiased std sqrt(0.5) -> A = +-0.5 / (0.70711 + 1e-6)
    a = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)
    expect = 0.5 / (np.sqrt(0.5) + 1e-6)
    np.testing.assert_allclose(a.numpy(), [expect, -expect, -expect, expect], rtol=1e-6)


@pytest.mark.parametrize("k", [2, 3, 8])
def test_random_groups_match_numpy(k):
    rng = np.random.default_rng(k)
    r = rng.normal(size=5 * k).astype(np.float32)
    g = r.reshape(5, k).astype(np.float64)
    std_expect = ((g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-6)).ravel()
    none_expect = (g - g.mean(1, keepdims=True)).ravel()
    np.testing.assert_allclose(group_advantages(torch.from_numpy(r), k).numpy(), std_expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        group_advantages(torch.from_numpy(r), k, scale="none").numpy(), none_expect, rtol=1e-5, atol=1e-6
    )


def test_equal_rewards_give_zero_not_nan():
    a = group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), 3)
    assert torch.equal(a, torch.zeros(6))


def test_group_of_one():
    r = torch.tensor([1.0, -0.1, 0.0])
    assert torch.equal(group_advantages(r, 1), torch.zeros(3))
    assert torch.equal(group_advantages(r, 1, singleton="raw"), r)  # verl / Trinity: mean 0, std 1


def test_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(4), 0)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="rank")


def test_no_rewards_give_no_advantages(recwarn):
    assert group_advantages(torch.zeros(0), 8).shape == (0,)
    assert not [w for w in recwarn if "degrees of freedom" in str(w.message)]
