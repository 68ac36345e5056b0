"""Suite-wide test setup.

Triton reads TRITON_INTERPRET when a @triton.jit decorator runs, so it has to be set before any
kernel module is imported; doing it here (the root conftest is loaded first) makes the
interpreted kernels available to every test on a machine without a GPU.
"""
import os

import pytest


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        return False


HAS_CUDA = _has_cuda()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
