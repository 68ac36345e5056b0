"""The implementations the benchmark compares, behind one signature.

Every variant is `fn(logits_leaf [N, V], targets [N], temperature) -> (logp [N], entropy [N])`
at TP=1 and must support backward of sum(g1 * logp + g2 * entropy). Variants may overwrite the
logits buffer (in-place backward, Megatron's in-place softmax); the harness restores it before
every run, outside the timed region.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass(frozen=True)
class Variant:
    name: str
    build: Callable[..., Callable]  # returns fn; may set up process groups etc. (triton*: launch=)
    devices: tuple  # ("cpu", "cuda") where it makes sense to time it
    note: str = ""


def _naive_entropy(z: torch.Tensor) -> torch.Tensor:
    """The separate entropy pass most RL code bases write: full-vocab softmax and log-softmax."""
    logp_all = torch.log_softmax(z.float(), dim=-1)
    return -(logp_all.exp() * logp_all).sum(dim=-1)


def _build_naive():
    def naive(x, t, temperature):
        logp_all = torch.log_softmax(x.float() / temperature, dim=-1)
        logp = logp_all.gather(-1, t.unsqueeze(-1)).squeeze(-1)
        return logp, -(logp_all.exp() * logp_all).sum(dim=-1)

    return naive


def _build_chord(impl: str, inplace: bool):
    def build(launch: Optional[dict] = None):
        """`launch`: LaunchConfig fields (the sweep's); None = the library's default_launch."""
        from chord_kernels import LaunchConfig, vocab_parallel_logprobs

        cfg = LaunchConfig(**launch) if launch else None

        def fn(x, t, temperature):
            return vocab_parallel_logprobs(
                x, t, vocab_start=0, temperature=temperature, impl=impl, inplace_backward=inplace, launch=cfg
            )

        return fn

    return build


def _build_reference():
    from chord_kernels.reference import reference_vocab_parallel_logprobs

    return lambda x, t, temperature: reference_vocab_parallel_logprobs(x, t, vocab_start=0, temperature=temperature)


def _init_megatron_tp1():
    """A one-rank process group and Megatron's model-parallel state (TP=1) in this process."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)


def _build_megatron():
    _init_megatron_tp1()
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    def megatron(x, t, temperature):
        z = x / temperature if temperature != 1.0 else x
        # Entropy first: Megatron's CE turns fp32 logits into the softmax in place.
        ent = _naive_entropy(z)
        return -vocab_parallel_cross_entropy(z, t), ent

    return megatron


def _build_liger():
    # Only importable where Liger-Kernel is installed (not in this project's dependencies).
    from liger_kernel.transformers import LigerCrossEntropyLoss

    ce = LigerCrossEntropyLoss(reduction="none")

    def liger(x, t, temperature):
        z = x / temperature if temperature != 1.0 else x
        ent = _naive_entropy(z)  # Liger writes its gradient into z during the forward
        return -ce(z, t), ent

    return liger


VARIANTS = {
    v.name: v
    for v in [
        Variant("naive", _build_naive, ("cpu", "cuda"), "log_softmax + gather + entropy, eager"),
        Variant("reference", _build_reference, ("cpu", "cuda"), "chord_kernels.reference (TP=1)"),
        Variant("chunked", _build_chord("chunked", False), ("cpu", "cuda"), "32-row chunks, new grad buffer"),
        Variant("chunked_inplace", _build_chord("chunked", True), ("cpu", "cuda"), "32-row chunks, grad over logits"),
        Variant("megatron_ce+entropy", _build_megatron, ("cpu", "cuda"), "vocab_parallel_cross_entropy + entropy pass"),
        Variant("triton", _build_chord("triton", False), ("cuda",), "fused kernel, new grad buffer"),
        Variant("triton_inplace", _build_chord("triton", True), ("cuda",), "fused kernel, grad over logits"),
        Variant("liger_ce+entropy", _build_liger, ("cuda",), "Liger cross-entropy + entropy pass"),
    ]
}


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def default_variants(device: str) -> list:
    return [name for name, v in VARIANTS.items() if device in v.devices]


def unavailable_reason(name: str, device: str) -> Optional[str]:
    """Why a variant cannot run here, or None."""
    if name.startswith("triton") and device == "cpu" and not triton_interpreted():
        return "Triton on CPU needs TRITON_INTERPRET=1 (and is then a correctness tool, not a fast path)"
    if name.startswith("megatron"):
        try:
            if importlib.util.find_spec("megatron.core") is None:
                raise ModuleNotFoundError
        except ModuleNotFoundError:
            return "megatron-core is not installed"
    if name.startswith("liger"):
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            return "liger_kernel is not installed"
        if device == "cpu":
            return "Liger-Kernel is GPU-only"
    return None
