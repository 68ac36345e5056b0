"""Suite-wide test setup: which mode this run is in, and a guard against test folders that never run.

Two modes, decided once before any test module is imported:
- **CPU mode** (the default, and the only one CI knows): the suite behaves as on a machine without
  a GPU even where one exists. The GPU is hidden from this process and every process it starts
  (CUDA_VISIBLE_DEVICES=""), so backends stay gloo, dtypes stay fp32 and no rank calls
  set_device(1) on a one-GPU host; TRITON_INTERPRET=1 runs the Triton kernels on CPU tensors.
  Triton reads TRITON_INTERPRET when a @triton.jit decorator runs, which is why it is set here,
  before any kernel module is imported. Tests marked `gpu` are skipped, with the reason.
- **GPU mode**: `pytest -m gpu` (a mark expression that selects `gpu` tests). The GPU stays
  visible and the kernels are compiled; on a machine without CUDA the selected tests are skipped.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent


def selects_gpu_tests(markexpr: str) -> bool:
    """True for mark expressions such as 'gpu' or 'gpu and not dist'; False for 'not gpu' or ''."""
    return re.search(r"(?<!not )\bgpu\b", markexpr or "") is not None


def nvidia_gpu_present() -> bool:
    """Whether the host has an NVIDIA GPU, asked of the driver's /proc entry: asking torch would
    initialise CUDA in this process, after which it can no longer be hidden."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def pytest_configure(config):
    config.chord_gpu_mode = selects_gpu_tests(config.option.markexpr)
    config.chord_host_gpu = nvidia_gpu_present()
    if not config.chord_gpu_mode:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _cuda_usable() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if config.chord_gpu_mode and _cuda_usable():
        return
    reason = (
        "GPU tests run on their own, with the GPU visible: pytest -m gpu"
        if config.chord_host_gpu and not config.chord_gpu_mode
        else "needs a CUDA GPU (none on this machine)"
    )
    skip_gpu = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def folders_with_tests(root: Path, testpaths) -> set:
    """Folders (relative to root) under `testpaths` that hold a test_*.py file tracked by git."""
    out = subprocess.run(["git", "ls-files", "--", *testpaths], cwd=root, capture_output=True, text=True)
    files = out.stdout.split() if out.returncode == 0 else []
    return {str(Path(f).parent) for f in files if re.fullmatch(r"test_.*\.py", Path(f).name)}


def uncollected_folders(folders: set, collected_files) -> list:
    """The folders of `folders` from which no collected test came."""
    seen = {str(Path(f).parent) for f in collected_files}
    return sorted(folders - seen)


def pytest_collection_finish(session):
    """A whole-suite run fails when some test folder contributed no test (pytest skipped it by name,
    as its default norecursedirs once did with tests/dist): a test that never runs proves nothing."""
    config = session.config
    whole_suite = not config.args or [str(Path(a).resolve()) for a in config.args] == [
        str((config.rootpath / p).resolve()) for p in config.getini("testpaths")
    ]
    if not whole_suite or config.option.markexpr or config.option.keyword:
        return
    rel = [str(Path(item.path).resolve().relative_to(config.rootpath)) for item in session.items]
    missing = uncollected_folders(folders_with_tests(config.rootpath, config.getini("testpaths")), rel)
    if missing:
        raise pytest.UsageError(
            f"test folders that collected no test (check norecursedirs in pytest.ini): {', '.join(missing)}"
        )
