"""What an SGLang 0.5.23 server takes on each of its GPUs, from its options (the sglang: section).

SGLang splits a GPU in two (sglang/srt/arg_groups/memory_hook.py, handle_gpu_memory_settings):
  static   mem_fraction_static x the GPU's memory: the weights and the KV cache pool, sized
           at start-up and held for the server's life (unless released: the memory saver);
  dynamic  what it needs outside that fraction -- activations of a prefill chunk, CUDA-graph
           buffers, its CUDA context -- which SGLang itself reserves as
           512 MiB + 1.5 MiB x max(chunked_prefill_size, 2048) + 1 GiB x tp x pp / 8
           + 2 MiB x the decode CUDA graphs' largest batch, at least 10 GiB on a GPU over 60 GiB.
When mem_fraction_static is unset SGLang takes everything but that reserve. Colocated with a
trainer, both parts come on top of the trainer's memory; this module only does the arithmetic,
with SGLang's defaults for the GPU size where the options leave them out.
"""

from __future__ import annotations

from typing import Any, Mapping, Tuple

MIB = 2**20


def _defaults(gpu_mib: float, tp: int) -> Tuple[int, int]:
    """SGLang's (chunked_prefill_size, decode CUDA-graph max batch) for a GPU of this size."""
    if gpu_mib < 20 * 1024:
        return 2048, 8
    if gpu_mib < 35 * 1024:
        return 4096, 48 if tp < 4 else 160
    if gpu_mib < 60 * 1024:
        return 4096, 32 if tp < 4 else 160
    if gpu_mib < 160 * 1024:  # H100, A100 80 GB, H200
        return 8192, 256 if tp < 4 else 512
    return 16384, 512


def sglang_dynamic(options: Mapping[str, Any], gpu_bytes: float) -> Tuple[float, str]:
    """(bytes, assumption): SGLang's own reserve outside mem_fraction_static, per GPU."""
    gpu_mib = gpu_bytes / MIB
    tp = int(options.get("tp_size", options.get("tp", 1)) or 1)
    pp = int(options.get("pp_size", 1) or 1)
    chunk_default, bs_default = _defaults(gpu_mib, tp)
    chunk = int(options.get("chunked_prefill_size") or chunk_default)
    tokens = max(chunk if chunk > 0 else int(options.get("max_prefill_tokens") or 16384), 2048)
    graphs = not options.get("disable_cuda_graph")
    given = options.get("cuda_graph_max_bs_decode") or options.get("cuda_graph_max_bs")  # 0.5.23; older releases
    max_bs = int(given or bs_default) if graphs else 0
    mib = 512 + tokens * 1.5 + tp * pp / 8 * 1024 + 2 * max_bs
    floor = gpu_mib > 60 * 1024
    if floor:
        mib = max(mib, 10 * 1024)
    text = (
        f"SGLang 0.5.23's own reserve: 512 MiB + 1.5 MiB x {tokens} prefill tokens + 1 GiB x TP {tp} x PP {pp} / 8 "
        f"+ 2 MiB x {max_bs} (decode CUDA graphs' max batch){', at least 10 GiB' if floor else ''}"
    )
    return mib * MIB, text


def sglang_static(options: Mapping[str, Any], gpu_bytes: float) -> Tuple[float, str]:
    """(bytes, assumption): weights + KV cache pool, mem_fraction_static of the GPU."""
    fraction = options.get("mem_fraction_static")
    if fraction is None:
        reserve, _ = sglang_dynamic(options, gpu_bytes)
        fraction = round((gpu_bytes - reserve) / gpu_bytes, 3)  # what SGLang picks for itself
        return fraction * gpu_bytes, f"sglang.mem_fraction_static unset: SGLang takes {fraction} of the GPU"
    return float(fraction) * gpu_bytes, f"sglang.mem_fraction_static {fraction} x the GPU: weights + KV cache pool"
