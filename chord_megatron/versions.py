"""What a Python environment has: torch, CUDA, NCCL, the driver, transformer-engine, megatron-core,
SGLang, sglang-router and their import problems, as one JSON-able dict (`versions()`).

Standard library and optional imports only, and no import of this package: `chord doctor` runs
this file's source in other environments (SGLang's, the router's) with `python -c`, where
chord_megatron is not installed; the GPU acceptance probe (scripts/gpu_acceptance/probe.py)
calls the same function in its own.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import platform
import shutil
import subprocess
import sys

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


def _findable(module: str) -> bool:
    """Whether a top-level module is there, without importing it (sglang's takes seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _requires(dist: str):
    """The requirement lines `dist` declares (its metadata), or [] when it is not installed."""
    try:
        return list(md.requires(dist) or [])
    except md.PackageNotFoundError:
        return []


IMPORT_CHECKS = ("megatron.core", "transformer_engine.pytorch", "apex")


def versions(import_checks=IMPORT_CHECKS) -> dict:
    """This environment's versions; `import_checks`: the modules to try importing (seconds each
    when present), their errors under "import_errors"."""
    v = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "packages": {p: _dist_version(p) for p in PACKAGES},
        # megatron-core declares the transformer-engine range it was released against
        "megatron_core_requires": [
            r for r in _requires("megatron-core") if r.lower().replace("_", "-").startswith("transformer-engine")
        ],
        "modules": {m: _findable(m) for m in ("sglang", "sglang_router")},
    }
    # transformer_engine's top-level import succeeds even when its torch part is broken (it
    # swallows the ImportError), so the part Megatron needs is what gets imported here.
    v["import_errors"] = {m: _import_error(m) for m in import_checks}
    try:
        import torch

        v["torch_cuda"] = torch.version.cuda
        v["cuda_available"] = torch.cuda.is_available()
        try:
            v["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as e:  # noqa: BLE001 - a CPU build has no NCCL
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
