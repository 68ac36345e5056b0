"""Step 1: what this machine is. Versions (torch, CUDA, driver, NCCL, triton, transformer-engine,
megatron-core, SGLang), the GPU's properties, and its copy bandwidth: the ceiling the kernel's
bandwidth fraction is read against.

`versions()` uses only the standard library and optional imports, so that the same function can
answer for any Python environment (the trainer's, SGLang's) by running this file there.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import platform
import shutil
import subprocess
import sys

from scripts.gpu_acceptance.report import StepReport

PACKAGES = (
    "torch",
    "triton",
    "transformers",
    "megatron-core",
    "transformer-engine",
    "apex",
    "sglang",
    "sglang-router",
    "nvidia-nccl-cu13",
    "nvidia-nccl-cu12",
    "flash-attn",
    "numpy",
)


def _dist_version(name: str):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _import_error(module: str):
    """None when `module` imports, else the error's one line (what a user would need to fix)."""
    try:
        importlib.import_module(module)
        return None
    except Exception as e:  # noqa: BLE001 - any failure to import is the answer
        return f"{type(e).__name__}: {e}"[:300]


def versions() -> dict:
    v = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "packages": {p: _dist_version(p) for p in PACKAGES},
    }
    # transformer_engine's top-level import succeeds even when its torch part is broken (it
    # swallows the ImportError), so the part Megatron needs is what gets imported here.
    v["import_errors"] = {m: _import_error(m) for m in ("megatron.core", "transformer_engine.pytorch", "apex")}
    try:
        import torch

        v["torch_cuda"] = torch.version.cuda
        v["cuda_available"] = torch.cuda.is_available()
        try:
            v["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as e:  # noqa: BLE001
            v["nccl"] = f"unknown ({type(e).__name__})"
    except ImportError as e:
        v["torch_error"] = str(e)
    if shutil.which("nvidia-smi"):
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        v["nvidia_smi"] = q.stdout.strip().splitlines()
    return v


def copy_bandwidth(device, gib: float = 2.0) -> float:
    """Device-to-device copy, bytes read + written per second (median of 10 after warm-up)."""
    import torch

    n = int(gib * 2**30) // 4
    a = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    b = torch.empty_like(a)
    times = []
    for i in range(13):
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0.record()
        b.copy_(a)
        t1.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(t0.elapsed_time(t1) / 1e3)
    times.sort()
    return 2 * a.numel() * 4 / times[len(times) // 2]


def main():
    rep = StepReport("probe", __doc__.splitlines()[0])
    v = versions()
    rep.record("versions", True, **v)
    if not v.get("cuda_available"):
        if rep.dry_run:
            rep.finish("pass", "dry run: no CUDA here; versions recorded")
        rep.finish("fail", "torch.cuda.is_available() is False: " + str(v.get("nvidia_smi") or "no nvidia-smi"))
    import torch

    with rep.check("device"):
        p = torch.cuda.get_device_properties(0)
        rep.record(
            "device",
            True,
            name=p.name,
            capability=f"{p.major}.{p.minor}",
            sms=p.multi_processor_count,
            memory_gib=round(p.total_memory / 2**30, 1),
            count=torch.cuda.device_count(),
        )
    with rep.check("copy_bandwidth"):
        bw = copy_bandwidth("cuda")
        rep.record("copy_bandwidth", bw > 0, bytes_per_s=round(bw), tb_per_s=round(bw / 1e12, 2))
    rep.finish()


if __name__ == "__main__":
    main()
