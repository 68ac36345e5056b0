"""Run megatron-core on a machine without CUDA: every CUDA assumption we patch, in one place.

megatron-core is written for GPUs. On CPU (our development machines and CI) a tiny GPTModel
trains over gloo once the following assumptions are redirected. Each entry of PATCHES names
its target, the CUDA assumption it removes, and how; tests/unit/test_compat_cpu_patches.py checks
every entry against the installed megatron-core, so a new release that moves a target or
drops an assumption fails a test instead of silently running unpatched code.

  torch_view   ~20 modules call torch.cuda.current_device(), torch.cuda.synchronize() and
               create tensors with device="cuda". Those modules (and only those) get a view of
               `torch` in which CUDA devices map to the CPU and synchronisation is a no-op.
               torch's own factories are never patched: doing that globally broke model loading
               in transformers (uninitialised RoPE buffers).
  rng_tracker  the tensor-parallel RNG tracker reads and writes the CUDA generator (and its
               setter is lazily queued, i.e. silently skipped, without CUDA): map it onto
               torch.default_generator. (torch.manual_seed would recurse into torch.cuda.)
  tensor_type  the optimizers and clip_grads compare Tensor.type() with 'torch.cuda.*' names:
               for calls made from those modules only, CPU tensors report the CUDA name.
  tensor_cuda  Tensor.cuda() called from those modules (tied embeddings across pipeline
               stages, loading a grad scaler) returns the CPU tensor itself.

Everything is applied only when CUDA is absent, once per process, and only on the pinned
megatron-core version (other versions are refused unless CHORD_ALLOW_UNPINNED_MEGATRON=1).
Things CPU / gloo cannot do are turned off in the model config instead (see train/model.py):
fusions, sequence parallelism, gradient-accumulation fusion, batched p2p (batch_p2p_comm,
batch_p2p_sync). Writing checkpoints without subprocesses is compat/ckpt_writer.py's job.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch

PINNED_MEGATRON_CORE = "0.16.1"
ALLOW_UNPINNED_ENV = "CHORD_ALLOW_UNPINNED_MEGATRON"

# Module -> the CUDA spellings its source must contain (checked by the tests; if a release
# drops all of them, the module no longer needs the view and should leave this list).
TORCH_VIEW_MODULES: Dict[str, Tuple[str, ...]] = {
    "megatron.core.pipeline_parallel.schedules": ('device="cuda"',),
    "megatron.core.pipeline_parallel.p2p_communication": ("torch.cuda.current_device()", "torch.cuda.synchronize()"),
    "megatron.core.optimizer.optimizer": ("device='cuda'", "torch.cuda.current_device()"),
    "megatron.core.optimizer.distrib_optimizer": ("torch.cuda.current_device()",),
    "megatron.core.optimizer.clip_grads": ("device='cuda'",),
    "megatron.core.optimizer.grad_scaler": ("device='cuda'",),
    "megatron.core.distributed.param_and_grad_buffer": ('device="cuda"', "torch.cuda.current_device()"),
    "megatron.core.distributed.distributed_data_parallel": ("torch.cuda.synchronize()",),
    "megatron.core.rerun_state_machine": ("device='cuda'", "torch.cuda.current_device()"),
    "megatron.core.tensor_parallel.layers": ("torch.cuda.current_device()",),
    "megatron.core.tensor_parallel.mappings": ("torch.cuda.current_device()",),
    "megatron.core.tensor_parallel.utils": ("torch.cuda.current_device()",),
    "megatron.core.tensor_parallel.data": ("device='cuda'",),
    "megatron.core.tensor_parallel.random": ("torch.cuda.get_rng_state()", "torch.cuda.manual_seed("),
    "megatron.core.transformer.module": ("torch.cuda.current_device()",),
    "megatron.core.transformer.transformer_layer": ("torch.cuda.current_device()",),
    "megatron.core.transformer.attention": ("torch.cuda.current_device()",),
    "megatron.core.transformer.dot_product_attention": ("torch.cuda.current_device()",),
    "megatron.core.transformer.utils": ('device="cuda"',),
    "megatron.core.models.gpt.gpt_model": ("torch.cuda.current_device()",),
    "megatron.core.models.common.embeddings.rotary_pos_embedding": ("torch.cuda.current_device()",),
    # context parallelism: RoPE picks this rank's position chunks with a pinned index tensor
    "megatron.core.models.common.embeddings.rope_utils": ("pin_memory=True",),
    "megatron.core.utils": ("torch.cuda.current_device()",),
    "megatron.core.dist_checkpointing.exchange_utils": ('device="cuda"',),
    "megatron.core.dist_checkpointing.strategies.async_utils": ("torch.cuda.synchronize()",),
    "megatron.core.dist_checkpointing.strategies.filesystem_async": ("torch.cuda.synchronize()",),
    "megatron.core.dist_checkpointing.strategies.fully_parallel": ("torch.cuda.synchronize()",),
    "megatron.core.dist_checkpointing.strategies.state_dict_saver": ("device='cuda'",),
    "megatron.core.dist_checkpointing.tensor_aware_state_dict": ("torch.cuda.synchronize()",),
}

# Modules whose Tensor.type() comparisons expect 'torch.cuda.*' names.
TENSOR_TYPE_CALLERS: Dict[str, Tuple[str, ...]] = {
    "megatron.core.optimizer.clip_grads": ("assert param.grad.type() == 'torch.cuda.FloatTensor'",),
    "megatron.core.optimizer.optimizer": ("param.type() == 'torch.cuda.FloatTensor'",),
    "megatron.core.optimizer.distrib_optimizer": ("model_param.type() == 'torch.cuda.FloatTensor'",),
}

# Modules whose Tensor.cuda() calls must stay on the CPU.
TENSOR_CUDA_CALLERS: Dict[str, Tuple[str, ...]] = {
    "megatron.core.models.common.language_module.language_module": ("weight.data = weight.data.cuda()",),
    "megatron.core.optimizer.grad_scaler": (".cuda(torch.cuda.current_device())",),
    "megatron.core.models.common.embeddings.rope_utils": (".cuda(non_blocking=True)",),
    # the fully_reshardable optimizer checkpoint gathers state through a CUDA staging tensor
    "megatron.core.optimizer.distrib_optimizer": ("send_tensor.cuda()",),
}

# The tensor-parallel RNG functions replaced, and what their unpatched source relies on.
RNG_FUNCTIONS: Dict[str, Tuple[str, ...]] = {
    "_get_cuda_rng_state": ("torch.cuda.random.get_rng_state", "torch.cuda.default_generators"),
    "_set_cuda_rng_state": ("_lazy_call(cb)", "torch.cuda.default_generators"),
}
RNG_MODULE = "megatron.core.tensor_parallel.random"

_lock = threading.Lock()
_applied = False
_original_tensor_methods: Dict[str, Callable] = {}


# ----------------------------------------------------------------------------------------------
# The torch view given to CUDA-assuming modules
# ----------------------------------------------------------------------------------------------
def _is_cuda_device(device: Any) -> bool:
    if device is None:
        return False
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int)  # a bare int means a CUDA ordinal to torch


def _cpu_factory(fn: Callable) -> Callable:
    def factory(*args, **kwargs):
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):  # pinning needs an accelerator
            kwargs["pin_memory"] = False
        return fn(*args, **kwargs)

    factory.__name__ = getattr(fn, "__name__", "factory")
    factory.__wrapped__ = fn
    return factory


class _NullStream:
    """Stands in for a CUDA stream: CPU work is already ordered."""

    def wait_stream(self, other) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


class CpuCudaView:
    """`torch.cuda` as a patched module sees it: the current device is the CPU."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)

    @staticmethod
    def current_device() -> torch.device:
        return torch.device("cpu")

    @staticmethod
    def synchronize(device: Any = None) -> None:
        pass

    @staticmethod
    def empty_cache() -> None:
        pass

    @staticmethod
    def get_rng_state(device: Any = "cuda") -> torch.Tensor:
        return torch.default_generator.get_state()

    @staticmethod
    def set_rng_state(new_state: torch.Tensor, device: Any = "cuda") -> None:
        torch.default_generator.set_state(new_state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.default_generator.manual_seed(seed)

    manual_seed_all = manual_seed

    @staticmethod
    def current_stream(device: Any = None) -> _NullStream:
        return _NullStream()

    default_stream = current_stream

    @staticmethod
    def stream(stream: Any = None) -> _NullStream:
        return _NullStream()


_FACTORIES = (
    "tensor",
    "as_tensor",
    "zeros",
    "ones",
    "empty",
    "full",
    "arange",
    "eye",
    "rand",
    "randn",
    "randint",
    "zeros_like",
    "ones_like",
    "empty_like",
    "full_like",
)


class CpuTorchView:
    """`torch` as a patched module sees it; everything not overridden is torch itself."""

    cuda = CpuCudaView()

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def __repr__(self) -> str:
        return "<torch, viewed with CUDA devices mapped to the CPU (chord_megatron.train.compat.cpu_patches)>"


for _name in _FACTORIES:
    setattr(CpuTorchView, _name, staticmethod(_cpu_factory(getattr(torch, _name))))
TORCH_VIEW = CpuTorchView()


def _apply_torch_view() -> None:
    for name in TORCH_VIEW_MODULES:
        module = importlib.import_module(name)
        if getattr(module, "torch", None) is not torch:
            raise RuntimeError(f"cpu_patches: {name} no longer binds `torch` at module level")
        module.torch = TORCH_VIEW


# ----------------------------------------------------------------------------------------------
# The tensor-parallel RNG tracker on the CPU generator
# ----------------------------------------------------------------------------------------------
def _get_rng_state_cpu(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    """Replacement of random._get_cuda_rng_state: the CPU generator's state (a fresh tensor)."""
    return torch.default_generator.get_state()


def _set_rng_state_cpu(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    """Replacement of random._set_cuda_rng_state (which is queued forever without CUDA)."""
    torch.default_generator.set_state(new_state)


def _apply_rng_tracker() -> None:
    module = importlib.import_module(RNG_MODULE)
    for name in RNG_FUNCTIONS:
        if not callable(getattr(module, name, None)):
            raise RuntimeError(f"cpu_patches: {RNG_MODULE}.{name} is gone")
    module._get_cuda_rng_state = _get_rng_state_cpu
    module._set_cuda_rng_state = _set_rng_state_cpu


# ----------------------------------------------------------------------------------------------
# Tensor.type() / Tensor.cuda(), as seen from the listed modules only
# ----------------------------------------------------------------------------------------------
def _caller_module(depth: int = 2) -> Optional[str]:
    return sys._getframe(depth).f_globals.get("__name__")


def _apply_tensor_methods() -> None:
    original_type = torch.Tensor.type
    original_cuda = torch.Tensor.cuda
    _original_tensor_methods.update(type=original_type, cuda=original_cuda)
    type_callers = frozenset(TENSOR_TYPE_CALLERS)
    cuda_callers = frozenset(TENSOR_CUDA_CALLERS)

    def type_(self, *args, **kwargs):
        if not args and not kwargs and self.device.type == "cpu" and _caller_module() in type_callers:
            return original_type(self).replace("torch.", "torch.cuda.", 1)
        return original_type(self, *args, **kwargs)

    def cuda(self, *args, **kwargs):
        if _caller_module() in cuda_callers:
            return self
        return original_cuda(self, *args, **kwargs)

    type_.__doc__ = original_type.__doc__
    cuda.__doc__ = original_cuda.__doc__
    torch.Tensor.type = type_
    torch.Tensor.cuda = cuda


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Patch:
    name: str
    targets: Dict[str, Tuple[str, ...]]  # module (or function) -> CUDA spellings in its source
    apply: Callable[[], None]


PATCHES: Tuple[Patch, ...] = (
    Patch("torch_view", TORCH_VIEW_MODULES, _apply_torch_view),
    Patch("rng_tracker", RNG_FUNCTIONS, _apply_rng_tracker),
    Patch("tensor_methods", {**TENSOR_TYPE_CALLERS, **TENSOR_CUDA_CALLERS}, _apply_tensor_methods),
)


def installed_megatron_version() -> str:
    from megatron.core import package_info

    return package_info.__version__


def check_megatron_version() -> str:
    """The installed megatron-core version; raises unless it is the pinned one (or the user
    explicitly allowed an untested version, which then only warns)."""
    version = installed_megatron_version()
    if version != PINNED_MEGATRON_CORE:
        message = (
            f"chord_megatron's workarounds of megatron-core internals (CPU patches, checkpoint and "
            f"gradient handling) were written and tested against megatron-core=={PINNED_MEGATRON_CORE}, "
            f"but {version} is installed. Install the pinned version "
            f"(pip install megatron-core=={PINNED_MEGATRON_CORE}) or set {ALLOW_UNPINNED_ENV}=1 "
            f"to try anyway, then run tests/unit/test_compat_cpu_patches.py."
        )
        if os.environ.get(ALLOW_UNPINNED_ENV) != "1":
            raise RuntimeError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return version


def cpu_patches_needed() -> bool:
    return not torch.cuda.is_available()


def apply_cpu_patches(force: bool = False) -> bool:
    """Apply every patch once, if CUDA is absent (or `force`, for tests). Returns whether the
    patches are now in effect. Safe to call many times and from several threads."""
    global _applied
    if not (force or cpu_patches_needed()):
        return False
    with _lock:
        if _applied:
            return True
        check_megatron_version()
        for patch in PATCHES:
            patch.apply()
        _applied = True
    return True


def cpu_patches_applied() -> bool:
    return _applied
