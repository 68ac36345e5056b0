"""The demo's base-model cache key: what shapes the weights is in it, what does not is not, and the
machine kind is (another CPU's kernels train another base from the same config)."""

import torch

import chord_megatron.metrics.provenance as provenance
from chord_megatron.config import load_config
from chord_megatron.demo.base_model import cache_key

DEMO = ["data.task=arith", "base.steps=100"]


def test_the_key_follows_what_shapes_the_weights_and_nothing_else():
    key = cache_key(load_config(None, DEMO))
    assert cache_key(load_config(None, DEMO)) == key
    # the layout (the cached weights are full) and where the cache lies do not shape the weights
    assert cache_key(load_config(None, [*DEMO, "parallel.tensor=2", "base.cache_dir=elsewhere"])) == key
    for shaping in ("base.target=0.05", "train.seed=7", "data.arith_digits=3", "model.hidden_size=32"):
        assert cache_key(load_config(None, [*DEMO, shaping])) != key, shaping


def test_another_machine_kind_gets_its_own_base(monkeypatch):
    cfg = load_config(None, DEMO)
    here = cache_key(cfg)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(provenance, "cpu_kernels", lambda: "ATen AVX2 MKL_CBWR=COMPATIBLE")
    assert provenance.rounding_kind() == f"{provenance.cpu_model()} / ATen AVX2 MKL_CBWR=COMPATIBLE"
    other_kernels = cache_key(cfg)
    monkeypatch.setattr(provenance, "cpu_model", lambda: "Intel(R) Xeon(R) Platinum 8480+")
    other_cpu = cache_key(cfg)
    assert len({here, other_kernels, other_cpu}) == 3
