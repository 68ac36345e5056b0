"""When the served weights are checked, and how: WeightSync's schedule (weight_sync/verified.py).

After every rollout.verify_every pushes the served weights are checked. The probe batch (an
extra generation plus a scoring pass) runs at the first checked push, every rollout.probe_every checks,
and where no training step with rollouts follows the push; otherwise the next step's training
forward, which scores the served tokens anyway, is judged by check_step at no cost.
"""

import pytest

from chord_megatron.config import load_config
from chord_megatron.weight_sync.verified import SyncVerificationError, WeightSync


class _Engine:
    def export_weights(self):
        return iter(())


class _Rollout:
    def pause(self):
        pass

    def resume(self):
        pass

    def update_weights(self, named, version):
        list(named)


def _run(monkeypatch, overrides, forward_checks, pushes):
    """Push versions 0..pushes-1; returns the versions that got a probe and those left to a step."""
    probed = []
    monkeypatch.setattr(WeightSync, "verify", lambda self, version: probed.append(version) or {"sync/verify_kl": 0.0})
    sync = WeightSync(_Engine(), _Rollout(), load_config(None, overrides), forward_checks=forward_checks)
    deferred = []
    for version in range(pushes):
        sync.push(version)
        if sync.unchecked is not None:
            deferred.append(sync.unchecked)
            sync.check_step(version, {"logp_mismatch_kl": 0.0, "logp_mismatch_nonfinite": 0.0})
    return probed, deferred


def test_only_the_first_and_the_last_push_get_a_probe_by_default(monkeypatch):
    steps = 6  # pushes 0..6: before each step, and the final one before the last evaluation
    probed, deferred = _run(monkeypatch, [], lambda s: s < steps, steps + 1)
    assert probed == [0, 6] and deferred == [1, 2, 3, 4, 5]


def test_a_push_before_an_sft_only_step_gets_a_probe(monkeypatch):
    probed, deferred = _run(monkeypatch, [], lambda s: s < 6 and s != 3, 7)
    assert probed == [0, 3, 6] and deferred == [1, 2, 4, 5]


def test_probe_every_and_verify_every(monkeypatch):
    probed, deferred = _run(monkeypatch, ["rollout.probe_every=2"], lambda s: True, 7)
    assert probed == [0, 1, 3, 5] and deferred == [2, 4, 6]  # checks 2, 4, 6 (pushes 1, 3, 5) probe
    probed, deferred = _run(monkeypatch, ["rollout.verify_every=2"], lambda s: True, 7)
    assert probed == [1] and deferred == [3, 5]  # pushes 2, 4, 6 are checked, the first with a probe
    probed, deferred = _run(monkeypatch, ["rollout.verify_every=0"], lambda s: False, 4)
    assert probed == [] and deferred == []


def test_check_step_judges_the_training_forward_with_the_probes_statistic(monkeypatch):
    monkeypatch.setattr(WeightSync, "verify", lambda self, version: {})
    cfg = load_config(None, ["model.dtype=fp32"])
    sync = WeightSync(_Engine(), _Rollout(), cfg, forward_checks=lambda s: True)
    sync.push(0)
    sync.push(1)
    assert sync.unchecked == 1
    bad = {"logp_mismatch_kl": 3e-4, "logp_mismatch_max": 0.2, "logp_mismatch_nonfinite": 0.0}
    with pytest.raises(SyncVerificationError, match="step 1, on the tokens served after weight sync 1.*KL 0.0003"):
        sync.check_step(1, bad)
    sync.push(2)
    with pytest.raises(SyncVerificationError, match="NaN or infinite"):
        sync.check_step(2, {"logp_mismatch_kl": 0.0, "logp_mismatch_nonfinite": 1.0, "logp_mismatch_tokens": 9.0})
    sync.push(3)
    sync.check_step(3, {"logp_mismatch_kl": 0.5e-4, "logp_mismatch_nonfinite": 0.0})  # within fp32's 1e-4
    assert sync.unchecked is None
    sync.check_step(4, {})  # nothing due: nothing to judge
    sync.push(5)
    with pytest.raises(RuntimeError, match="measured no served log-probs"):
        sync.check_step(5, {"loss": 1.0})
