"""chord_loss against an independent per-token re-derivation (plain Python floats), by hand
cases for every branch of the clipped surrogate, and the empty-kind / NaN guarantees."""

import math

import pytest
import torch

from chord_megatron.algo import chord_loss


def reference(logp, old, adv, mask, is_expert, mu, clip_low=0.2, clip_high=0.2, dual_clip=None, clamp=20.0):
    """Loss and d loss / d logp, token by token, written straight from chord-spec.md."""
    B, T = len(logp), len(logp[0])
    rl = [(b, t) for b in range(B) for t in range(T) if mask[b][t] and not is_expert[b]]
    sft = [(b, t) for b in range(B) for t in range(T) if mask[b][t] and is_expert[b]]
    grad = [[0.0] * T for _ in range(B)]
    grpo = 0.0
    for b, t in rl:
        a = adv[b] if not isinstance(adv[b], list) else adv[b][t]
        lr = max(-clamp, min(clamp, logp[b][t] - old[b][t]))
        r = math.exp(lr)
        unclipped = -a * r
        clipped = -a * min(max(r, 1 - clip_low), 1 + clip_high)
        val, d = (unclipped, -a * r) if unclipped >= clipped else (clipped, 0.0)
        if dual_clip is not None and a < 0 and val > -a * dual_clip:
            val, d = -a * dual_clip, 0.0
        if abs(logp[b][t] - old[b][t]) > clamp:
            d = 0.0
        grpo += val
        grad[b][t] += (1 - mu) * d / len(rl)
    sft_loss = 0.0
    for b, t in sft:
        p = math.exp(logp[b][t])
        phi = p * (1 - p)
        sft_loss += -logp[b][t] * phi
        grad[b][t] += -mu * phi / len(sft)
    grpo = grpo / len(rl) if rl else 0.0
    sft_loss = sft_loss / len(sft) if sft else 0.0
    return (1 - mu) * grpo + mu * sft_loss, grad


def random_case(seed, B=6, T=7, expert_rows=(1, 4)):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g) * 4 - 0.01
    old = logp + torch.randn(B, T, generator=g) * 0.4  # ratios both inside and outside the clip range
    adv = torch.randn(B, generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.25).float()
    is_expert = torch.zeros(B, dtype=torch.bool)
    is_expert[list(expert_rows)] = True
    return logp, old, adv, mask, is_expert


def run(logp, *args, **kwargs):
    logp = logp.clone().requires_grad_()
    loss, metrics = chord_loss(logp, *args, **kwargs)
    loss.backward()
    return loss, logp.grad, metrics


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_random_cases_match_reference(seed, dual_clip):
    logp, old, adv, mask, is_expert = random_case(seed)
    mu = 0.3
    loss, grad, _ = run(logp, old, adv, mask, is_expert, mu, dual_clip=dual_clip, clip_high=0.28)
    ref_loss, ref_grad = reference(
        logp.tolist(),
        old.tolist(),
        adv.tolist(),
        mask.tolist(),
        is_expert.tolist(),
        mu,
        clip_high=0.28,
        dual_clip=dual_clip,
    )
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(grad, torch.tensor(ref_grad), rtol=1e-5, atol=1e-7)


def test_expert_token_gradient_is_minus_mu_phi_over_n():
    logp, old, adv, mask, _ = random_case(7)
    is_expert = torch.ones(6, dtype=torch.bool)
    mu = 0.37
    _, grad, metrics = run(logp, old, adv, mask, is_expert, mu)
    p = logp.exp()
    expect = -mu * p * (1 - p) / mask.sum() * mask
    torch.testing.assert_close(grad, expect)
    assert metrics["sft_tokens"].item() == mask.sum().item()


def one_token(logp, old, adv, **kw):
    """A batch of one on-policy token: loss and gradient of (1 - mu) * surrogate with mu = 0."""
    lp = torch.tensor([[logp]])
    return run(lp, torch.tensor([[old]]), torch.tensor([adv]), torch.ones(1, 1), torch.tensor([False]), 0.0, **kw)


@pytest.mark.parametrize(
    "ratio,adv,branch",
    [
        (1.5, 1.0, "clipped"),  # A > 0 and r > 1 + eps: clipped at 1.2, no gradient
        (0.5, 1.0, "unclipped"),  # A > 0 and r < 1 - eps: the pessimistic bound is the unclipped term
        (0.5, -1.0, "clipped"),  # A < 0 and r < 1 - eps: clipped at 0.8, no gradient
        (1.5, -1.0, "unclipped"),  # A < 0 and r > 1 + eps: unclipped
        (1.1, 1.0, "unclipped"),  # inside the trust region
    ],
)
def test_clipped_surrogate_branches(ratio, adv, branch):
    loss, grad, metrics = one_token(math.log(ratio) - 1.0, -1.0, adv)
    if branch == "clipped":
        bound = 1.2 if ratio > 1 else 0.8
        assert loss.item() == pytest.approx(-adv * bound, rel=1e-6)
        assert grad.item() == 0.0
        assert metrics["clip_frac"].item() == 1.0
    else:
        assert loss.item() == pytest.approx(-adv * ratio, rel=1e-6)
        assert grad.item() == pytest.approx(-adv * ratio, rel=1e-6)  # d(-A r)/dlogp = -A r
        assert metrics["clip_frac"].item() == 0.0


def test_dual_clip_engages_only_for_negative_advantages():
    ratio = 5.0
    # negative advantage: plain PPO gives -A*r = 5; dual clip caps it at -A*c = 3 with no gradient
    loss_plain, _, _ = one_token(math.log(ratio), 0.0, -1.0)
    loss_dual, grad_dual, m = one_token(math.log(ratio), 0.0, -1.0, dual_clip=3.0)
    assert loss_plain.item() == pytest.approx(5.0, rel=1e-6)
    assert loss_dual.item() == pytest.approx(3.0, rel=1e-6)
    assert grad_dual.item() == 0.0 and m["dual_clip_frac"].item() == 1.0
    # positive advantage: identical with and without dual clip
    for r in (0.1, 1.0, 5.0):
        a, ga, _ = one_token(math.log(r), 0.0, 1.0)
        b, gb, mb = one_token(math.log(r), 0.0, 1.0, dual_clip=3.0)
        assert a.item() == b.item() and ga.item() == gb.item() and mb["dual_clip_frac"].item() == 0.0
    # negative advantage below the cap: untouched
    a, ga, _ = one_token(math.log(2.0), 0.0, -1.0)
    b, gb, _ = one_token(math.log(2.0), 0.0, -1.0, dual_clip=3.0)
    assert a.item() == b.item() == pytest.approx(2.0) and ga.item() == gb.item()


def test_logratio_clamp():
    loss, grad, _ = one_token(0.0, -30.0, -1.0)  # log ratio 30 -> clamped to 20
    assert loss.item() == pytest.approx(math.exp(20.0), rel=1e-5)
    assert grad.item() == 0.0


@pytest.mark.parametrize("kind", ["expert_only", "rl_only", "nothing"])
def test_empty_kind_contributes_zero_never_nan(kind):
    logp, old, adv, mask, _ = random_case(3)
    is_expert = torch.full((6,), kind == "expert_only")
    if kind == "nothing":
        mask = torch.zeros_like(mask)
    loss, grad, m = run(logp, old, adv, mask, is_expert, 0.4)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert all(torch.isfinite(v) for v in m.values())
    if kind == "expert_only":
        assert m["grpo_loss"].item() == 0.0 and m["rl_tokens"].item() == 0
        assert loss.item() == pytest.approx(0.4 * m["sft_loss"].item())
    elif kind == "rl_only":
        assert m["sft_loss"].item() == 0.0 and m["sft_tokens"].item() == 0
        assert loss.item() == pytest.approx(0.6 * m["grpo_loss"].item())
    else:
        assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))


def test_garbage_in_ignored_positions_does_not_leak():
    logp, old, adv, mask, is_expert = random_case(11)
    clean_loss, clean_grad, _ = run(logp, old, adv, mask, is_expert, 0.5)
    dirty_old = old.clone()
    dirty_old[is_expert] = float("nan")  # expert rows' old_logp is ignored
    dirty_old[mask == 0] = float("inf")  # so is anything under the mask
    dirty_logp = logp.clone()
    dirty_logp[mask == 0] = float("-inf")  # padding may be anything
    loss, grad, _ = run(dirty_logp, dirty_old, adv, mask, is_expert, 0.5)
    assert loss.item() == clean_loss.item()
    torch.testing.assert_close(grad, clean_grad)


def test_global_denominators_make_micro_batches_add_up():
    logp, old, adv, mask, is_expert = random_case(5, B=8, expert_rows=(0, 3, 6))
    full_loss, full_grad, _ = run(logp, old, adv, mask, is_expert, 0.25)
    rl_n = (mask * ~is_expert[:, None]).sum()
    sft_n = (mask * is_expert[:, None]).sum()
    den = {"rl": rl_n, "sft": sft_n}
    total, grads = 0.0, []
    for rows in (slice(0, 3), slice(3, 5), slice(5, 8)):  # uneven split, one micro-batch has no expert row
        part, g, _ = run(logp[rows], old[rows], adv[rows], mask[rows], is_expert[rows], 0.25, denominators=den)
        total += part.item()
        grads.append(g)
    assert total == pytest.approx(full_loss.item(), rel=1e-6)
    torch.testing.assert_close(torch.cat(grads), full_grad)


def test_per_token_advantages_equal_broadcast_ones():
    logp, old, adv, mask, is_expert = random_case(2)
    a = run(logp, old, adv, mask, is_expert, 0.1)
    b = run(logp, old, adv[:, None].expand(6, 7).contiguous(), mask, is_expert, 0.1)
    assert a[0].item() == b[0].item()
    torch.testing.assert_close(a[1], b[1])


def test_truncated_importance_sampling():
    # trainer old_logp -1.0, engine said -2.0: IS weight e^1 = 2.718, truncated at 2
    kw = dict(rollout_logp=torch.tensor([[-2.0]]))
    loss_cap, grad_cap, m = one_token(-1.0, -1.0, 1.0, tis_cap=2.0, **kw)
    loss_big, _, _ = one_token(-1.0, -1.0, 1.0, tis_cap=10.0, **kw)
    assert loss_cap.item() == pytest.approx(-2.0, rel=1e-6)
    assert grad_cap.item() == pytest.approx(-2.0, rel=1e-6)
    assert loss_big.item() == pytest.approx(-math.e, rel=1e-6)
    assert m["tis_weight_mean"].item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="rollout_logp"):
        one_token(-1.0, -1.0, 1.0, tis_cap=2.0)


def test_mu_extremes_and_tensor_mu():
    logp, old, adv, mask, is_expert = random_case(4)
    l0, _, m0 = run(logp, old, adv, mask, is_expert, 0.0)
    l1, _, m1 = run(logp, old, adv, mask, is_expert, 1.0)
    lt, _, _ = run(logp, old, adv, mask, is_expert, torch.tensor(0.0))
    assert l0.item() == pytest.approx(m0["grpo_loss"].item())
    assert l1.item() == pytest.approx(m1["sft_loss"].item())
    assert lt.item() == l0.item()


def test_metrics_by_hand():
    # two on-policy tokens (one clipped), two expert tokens with p = 0.5 and p = 0.9
    logp = torch.tensor([[math.log(1.5), 0.0], [math.log(0.5), math.log(0.9)]])
    old = torch.zeros(2, 2)
    _, _, m = run(logp, old, torch.tensor([1.0, 0.0]), torch.ones(2, 2), torch.tensor([False, True]), 0.5)
    assert m["clip_frac"].item() == 0.5
    assert m["phi_mean"].item() == pytest.approx((0.25 + 0.09) / 2)
    assert m["sft_nll"].item() == pytest.approx(-(math.log(0.5) + math.log(0.9)) / 2)
    k3 = (1.5 - 1 - math.log(1.5)) / 2
    assert m["approx_kl"].item() == pytest.approx(k3, rel=1e-6)


def test_shape_errors_name_the_argument():
    logp, old, adv, mask, is_expert = random_case(0)
    with pytest.raises(ValueError, match="old_logp"):
        chord_loss(logp, old[:, :3], adv, mask, is_expert, 0.1)
    with pytest.raises(ValueError, match="is_expert"):
        chord_loss(logp, old, adv, mask, is_expert[:2], 0.1)
    with pytest.raises(ValueError, match="advantages"):
        chord_loss(logp, old, adv[:2], mask, is_expert, 0.1)
