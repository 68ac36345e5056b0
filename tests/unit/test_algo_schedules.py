"""mu(step) against the spec's piecewise formula, evaluated independently with numpy."""

import math

import numpy as np
import pytest

from chord_megatron.algo import adaptive_mu, mu_schedule, staged_mu


def spec_mu(step, warmup, decay, peak, valley):
    # Written from chord-spec.md, vectorised so it shares no code path with mu_schedule.
    s = np.asarray(step, dtype=np.float64)
    warm = peak * s / max(warmup, 1)
    cos = valley + (peak - valley) * 0.5 * (1 + np.cos(np.pi * (s - warmup) / max(decay, 1)))
    return np.where(s < warmup, warm, np.where(s < warmup + decay, cos, valley))


@pytest.mark.parametrize(
    "warmup,decay,peak,valley",
    [
        (200, 400, 0.5, 0.02),
        (0, 200, 0.9, 0.05),
        (0, 20, 0.6, 0.0),
        (0, 0, 0.1, 0.1),
        (7, 0, 0.3, 0.1),
        (3, 5, 1.0, 0.0),
    ],
)
def test_matches_spec_formula_everywhere(warmup, decay, peak, valley):
    steps = np.arange(0, warmup + decay + 50)
    ours = np.array([mu_schedule(int(s), warmup=warmup, decay=decay, peak=peak, valley=valley) for s in steps])
    np.testing.assert_allclose(ours, spec_mu(steps, warmup, decay, peak, valley), rtol=0, atol=1e-12)


def test_boundaries_by_hand():
    kw = dict(warmup=10, decay=20, peak=0.5, valley=0.02)
    assert mu_schedule(0, **kw) == 0.0  # warmup starts at 0
    assert mu_schedule(5, **kw) == pytest.approx(0.25)
    assert mu_schedule(9, **kw) == pytest.approx(0.45)
    assert mu_schedule(10, **kw) == pytest.approx(0.5)  # first decay step: cos(0) = 1 -> peak
    assert mu_schedule(20, **kw) == pytest.approx(0.02 + 0.48 / 2)  # half-way: cos(pi/2) = 0
    assert mu_schedule(29, **kw) == pytest.approx(0.02 + 0.48 * 0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert mu_schedule(30, **kw) == 0.02  # decay over: the floor
    assert mu_schedule(10_000, **kw) == 0.02


def test_constant_when_no_warmup_and_no_decay():
    for step in (0, 1, 17, 10_000):
        assert mu_schedule(step, warmup=0, decay=0, peak=0.9, valley=0.1) == 0.1


def test_chord_mu_math_midpoint():
    # CHORD-mu (math): 0.9 -> 0.05 over 200 steps; half-way is the mean of the two.
    assert mu_schedule(100, warmup=0, decay=200, peak=0.9, valley=0.05) == pytest.approx(0.475)


def test_rejects_negative_inputs():
    with pytest.raises(ValueError, match="step"):
        mu_schedule(-1, warmup=0, decay=0, peak=0.1, valley=0.1)
    with pytest.raises(ValueError, match="warmup"):
        mu_schedule(0, warmup=-1, decay=0, peak=0.1, valley=0.1)


def test_adaptive_mu():
    assert adaptive_mu(0.2) == pytest.approx(0.3)
    assert adaptive_mu(0.9) == 0.0
    assert adaptive_mu(0.1, tau=0.4) == pytest.approx(0.3)


def test_staged_mu_is_sft_then_the_schedule():
    kw = dict(warmup=0, decay=0, peak=0.0, valley=0.0)
    assert [staged_mu(s, sft_steps=3, **kw) for s in range(6)] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    # the schedule restarts its clock when the SFT stage ends
    kw = dict(warmup=0, decay=10, peak=0.8, valley=0.0)
    assert staged_mu(5, sft_steps=5, **kw) == pytest.approx(0.8)
    assert staged_mu(10, sft_steps=5, **kw) == pytest.approx(mu_schedule(5, **kw))
    assert staged_mu(7, sft_steps=0, **kw) == mu_schedule(7, **kw)
