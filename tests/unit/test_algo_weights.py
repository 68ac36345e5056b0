"""phi weights: values by hand, detachment, and the cutoff's equivalence to the reference clamp."""

import math

import pytest
import torch

from chord_megatron.algo import TOKEN_WEIGHT_KINDS, token_weights


def probs(*ps):
    return torch.tensor(ps, dtype=torch.float64).log().float()


def test_values_by_hand():
    logp = probs(0.5, 0.9, 0.1, 1.0)
    torch.testing.assert_close(token_weights(logp, "none"), torch.ones(4))
    torch.testing.assert_close(token_weights(logp, "p"), torch.tensor([0.5, 0.9, 0.1, 1.0]))
    torch.testing.assert_close(token_weights(logp, "p1mp"), torch.tensor([0.25, 0.09, 0.09, 0.0]))
    torch.testing.assert_close(token_weights(logp, "focal", gamma=2.0), torch.tensor([0.25, 0.01, 0.81, 0.0]))
    torch.testing.assert_close(token_weights(logp, "focal", gamma=1.0), torch.tensor([0.5, 0.1, 0.9, 0.0]))
    torch.testing.assert_close(token_weights(logp, "is_clip"), torch.tensor([0.4, 0.4, 0.1, 0.4]))
    torch.testing.assert_close(token_weights(logp, "is_clip", is_cap=0.6), torch.tensor([0.5, 0.6, 0.1, 0.6]))


def test_p1mp_peaks_at_half_and_vanishes_at_the_ends():
    p = torch.linspace(1e-4, 1 - 1e-4, 1001, dtype=torch.float64)
    w = token_weights(p.log(), "p1mp").double()
    assert p[w.argmax()].item() == pytest.approx(0.5, abs=1e-3)
    assert w.max().item() == pytest.approx(0.25, abs=1e-6)
    assert w[0].item() < 1e-3 and w[-1].item() < 1e-3


def test_entropy_weight_is_normalised_by_log_vocab():
    V = 32
    uniform = torch.full((V,), 1.0 / V)
    peaked = torch.tensor([0.97] + [0.03 / (V - 1)] * (V - 1))
    ent = torch.stack([-(q * q.log()).sum() for q in (uniform, peaked)])
    w = token_weights(probs(0.2, 0.97), "entropy", entropy=ent, vocab_size=V)
    assert w[0].item() == pytest.approx(1.0, abs=1e-6)
    assert w[1].item() == pytest.approx(ent[1].item() / math.log(V), rel=1e-6)
    with pytest.raises(ValueError, match="entropy"):
        token_weights(probs(0.2), "entropy")


@pytest.mark.parametrize("kind", [k for k in TOKEN_WEIGHT_KINDS if k != "entropy"])
def test_weights_are_detached(kind):
    logp = (-torch.rand(3, 4) * 3).requires_grad_()
    w = token_weights(logp, kind)
    assert not w.requires_grad
    (-(logp * w).sum()).backward()
    torch.testing.assert_close(logp.grad, -w)  # d/dlogp of -w*logp is -w: nothing through w


def test_cutoff_gives_the_reference_clamp_gradient():
    # Reference implementation: NLL of clamp(logp, max=log(cutoff)), phi from the unclamped p.
    torch.manual_seed(0)
    logp = torch.log(torch.rand(64).clamp(0.01, 0.99)).requires_grad_()
    cutoff = 0.6
    phi = (logp.exp() * (1 - logp.exp())).detach()
    ref = (-logp.clamp(max=math.log(cutoff)) * phi).sum()
    (g_ref,) = torch.autograd.grad(ref, logp)
    ours = (-logp * token_weights(logp, "p1mp", cutoff_prob=cutoff)).sum()
    (g_ours,) = torch.autograd.grad(ours, logp)
    assert (logp.exp() > cutoff).any() and (logp.exp() <= cutoff).any()
    torch.testing.assert_close(g_ours, g_ref)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown kind"):
        token_weights(probs(0.5), "p2")
    with pytest.raises(ValueError, match="cutoff_prob"):
        token_weights(probs(0.5), cutoff_prob=0.0)
