"""Every CPU patch against the installed megatron-core.

For each patch: its target still exists, the unpatched source (read from disk, which patching
never changes) still contains the CUDA assumption the patch removes -- so a megatron-core
release that moves or fixes it fails here instead of running silently unpatched code -- and
the patched behaviour works on CPU while torch itself stays untouched.
"""

import importlib
import inspect

import pytest
import torch

from chord_megatron.train.compat import cpu_patches as cp

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the patches apply only without CUDA")


@pytest.fixture(scope="module", autouse=True)
def patched():
    assert cp.apply_cpu_patches() is True
    assert cp.cpu_patches_applied()


def _source(module_name: str) -> str:
    return inspect.getsource(importlib.import_module(module_name))


# ---- version pin ---------------------------------------------------------------------------
def test_installed_megatron_core_is_the_pinned_version():
    assert cp.installed_megatron_version() == cp.PINNED_MEGATRON_CORE == "0.16.1"
    assert cp.check_megatron_version() == "0.16.1"


def test_other_version_is_refused_unless_allowed(monkeypatch):
    monkeypatch.setattr(cp, "installed_megatron_version", lambda: "0.19.2")
    monkeypatch.delenv(cp.ALLOW_UNPINNED_ENV, raising=False)
    with pytest.raises(RuntimeError, match=r"megatron-core==0.16.1.*0\.19\.2 is installed"):
        cp.check_megatron_version()
    monkeypatch.setenv(cp.ALLOW_UNPINNED_ENV, "1")
    with pytest.warns(RuntimeWarning, match="0.19.2"):
        assert cp.check_megatron_version() == "0.19.2"


def test_apply_is_idempotent_and_skipped_with_cuda(monkeypatch):
    assert cp.apply_cpu_patches() is True  # second call: no-op, still in effect
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cp.apply_cpu_patches() is False


# ---- torch_view: per-module CUDA devices -> CPU ---------------------------------------------
@pytest.mark.parametrize("module_name", sorted(cp.TORCH_VIEW_MODULES))
def test_torch_view_target_still_assumes_cuda(module_name):
    source = _source(module_name)
    assert "import torch\n" in source, f"{module_name} no longer imports torch as a module"
    for spelling in cp.TORCH_VIEW_MODULES[module_name]:
        assert spelling in source, f"{module_name} no longer contains {spelling!r}: revisit its patch"
    assert importlib.import_module(module_name).torch is cp.TORCH_VIEW


def test_torch_view_maps_cuda_devices_to_cpu():
    view = cp.TORCH_VIEW
    for device in ("cuda", "cuda:0", torch.device("cuda", 0), 0, view.cuda.current_device()):
        assert view.zeros(2, device=device).device.type == "cpu"
    assert view.tensor([1.0], device="cuda", pin_memory=True).device.type == "cpu"
    assert view.empty_like(torch.ones(3), device="cuda").shape == (3,)
    assert view.cuda.current_device() == torch.device("cpu")
    view.cuda.synchronize()  # no-op, must not raise
    view.cuda.current_stream().wait_stream(view.cuda.default_stream())
    assert view.float32 is torch.float32 and view.Tensor is torch.Tensor  # the rest is torch


def test_torch_itself_is_not_patched():
    assert not hasattr(torch.zeros, "__wrapped__")
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1, device="cuda")
    with pytest.raises((AssertionError, RuntimeError)):
        torch.cuda.current_device()


def test_causal_mask_and_rotary_buffers_build_on_cpu():
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.transformer.utils import get_default_causal_mask

    mask = get_default_causal_mask(4)  # source: torch.ones(sq, sq, device="cuda")
    assert mask.device.type == "cpu" and mask.tolist()[0] == [False, True, True, True]
    rope = RotaryEmbedding(kv_channels=8, rotary_percent=1.0, use_cpu_initialization=False)
    assert rope.inv_freq.device.type == "cpu"  # source: .to(torch.cuda.current_device())
    torch.testing.assert_close(rope.inv_freq, 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8))


# ---- rng_tracker: the CUDA RNG tracker on torch.default_generator ---------------------------
@pytest.mark.parametrize("function_name", sorted(cp.RNG_FUNCTIONS))
def test_rng_target_still_assumes_cuda(function_name):
    module = importlib.import_module(cp.RNG_MODULE)
    original = inspect.getsource(module).split(f"def {function_name}(")[1].split("\ndef ")[0]
    for spelling in cp.RNG_FUNCTIONS[function_name]:
        assert spelling in original, f"{function_name} no longer contains {spelling!r}"
    assert getattr(module, function_name).__module__ == cp.__name__


def test_rng_tracker_forks_reproducible_cpu_streams():
    from megatron.core.tensor_parallel import random as mrandom

    mrandom.model_parallel_cuda_manual_seed(123, tp_rank=0, ep_rank=0, etp_rank=0, force_reset_rng=True)
    tracker = mrandom.get_cuda_rng_tracker()
    before = torch.get_rng_state()
    with tracker.fork():
        a = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before), "fork must restore the default stream"
    with tracker.fork():
        b = torch.rand(4)
    assert not torch.equal(a, b), "the tracked stream must advance"
    mrandom.model_parallel_cuda_manual_seed(123, tp_rank=0, ep_rank=0, etp_rank=0, force_reset_rng=True)
    with mrandom.get_cuda_rng_tracker().fork():
        assert torch.equal(torch.rand(4), a), "same seed, same stream"
    # The model-parallel stream is seeded with seed + 2718 + tp_rank (megatron's convention).
    g = torch.Generator().manual_seed(123 + 2718)
    assert torch.equal(a, torch.rand(4, generator=g))


# ---- tensor_methods: Tensor.type() / .cuda() as seen from the listed modules ----------------
@pytest.mark.parametrize("module_name", sorted(set(cp.TENSOR_TYPE_CALLERS) | set(cp.TENSOR_CUDA_CALLERS)))
def test_tensor_method_targets_still_assume_cuda(module_name):
    source = _source(module_name)
    for spelling in cp.TENSOR_TYPE_CALLERS.get(module_name, ()) + cp.TENSOR_CUDA_CALLERS.get(module_name, ()):
        assert spelling in source, f"{module_name} no longer contains {spelling!r}"


def test_clip_grads_runs_on_cpu_and_scales():
    # (The norm itself needs a process group: the dist tests cover it through grad clipping.)
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    params[0].grad = torch.full((3,), 2.0)
    params[1].grad = torch.full((2, 2), -1.0)
    # Source: assert param.grad.type() == 'torch.cuda.FloatTensor', then a device='cuda' buffer.
    clip_grad_by_total_norm_fp32(params, max_norm=1.0, total_norm=4.0)
    torch.testing.assert_close(params[0].grad, torch.full((3,), 2.0 / (4.0 + 1e-6)))
    torch.testing.assert_close(params[1].grad, torch.full((2, 2), -1.0 / (4.0 + 1e-6)))


def _call_as(module_name: str, expression: str, **names):
    """Evaluate `expression` in a frame whose module is `module_name` (how the patches scope)."""
    return eval(compile(expression, f"<{module_name}>", "eval"), {"__name__": module_name, **names})


def test_tensor_methods_are_scoped_to_the_listed_modules():
    t = torch.ones(2)
    assert t.type() == "torch.FloatTensor"  # everyone else sees the truth
    assert t.type(torch.float64).dtype == torch.float64
    assert _call_as("megatron.core.optimizer.distrib_optimizer", "t.type()", t=t) == "torch.cuda.FloatTensor"
    assert _call_as("megatron.core.optimizer.optimizer", "t.bfloat16().type()", t=t) == "torch.cuda.BFloat16Tensor"
    lm = "megatron.core.models.common.language_module.language_module"
    assert _call_as(lm, "t.cuda()", t=t) is t
    with pytest.raises((AssertionError, RuntimeError)):
        t.cuda()


def test_the_version_is_checked_on_gpu_hosts_too(monkeypatch):
    """The GPU path leans on 0.16.1's internals as much as the CPU path: init_parallel refuses
    another version before it touches CUDA or a process group."""
    from chord_megatron.config import load_config
    from chord_megatron.train import parallel

    monkeypatch.setattr(cp, "installed_megatron_version", lambda: "0.19.2")
    monkeypatch.delenv(cp.ALLOW_UNPINNED_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU node
    monkeypatch.setattr(parallel, "init_distributed", lambda *a, **k: pytest.fail("reached process-group setup"))
    with pytest.raises(RuntimeError, match="0.16.1, but 0.19.2 is installed"):
        parallel.init_parallel(load_config(None, []).parallel)
