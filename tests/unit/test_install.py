"""The GPU install paths, checked with pip's own resolver (dry run, no index, nothing installed).

In an NGC PyTorch container torch is NVIDIA's build (a pre-release such as 2.9.0a0+nv25.10) and
transformer-engine and apex are compiled against it: replacing torch breaks both. Here a
container's torch is stood in for by its metadata alone, ahead of everything on the path; pip
then plans the install exactly as it would in the container.
"""

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
NGC_TORCH = "2.9.0a0+nv25.10"


def _planned(tmp_path: Path, keep_torch: bool) -> dict:
    site = tmp_path / "container-site"
    info = site / f"torch-{NGC_TORCH}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {NGC_TORCH}\n")
    (info / "RECORD").write_text("")
    report = tmp_path / f"report-{int(keep_torch)}.json"
    env = dict(os.environ, PYTHONPATH=str(site), CHORD_KEEP_TORCH="1" if keep_torch else "0")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--no-build-isolation",
        "--no-index",
        "--quiet",
        "--report",
        str(report),
        "-e",
        str(ROOT),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


@pytest.mark.slow
def test_keep_torch_leaves_the_containers_torch_alone(tmp_path):
    assert "torch" in _planned(tmp_path, keep_torch=False)  # the default install would replace it
    planned = _planned(tmp_path, keep_torch=True)
    assert set(planned) == {"chord-megatron"}, planned  # megatron-core's torch>=2.6 accepts NVIDIA's build


def test_transformer_engine_range_is_the_one_megatron_core_declares():
    setup_py = (ROOT / "setup.py").read_text()
    ours = Requirement(
        next(line.split('"')[1] for line in setup_py.splitlines() if line.startswith("TRANSFORMER_ENGINE ="))
    )
    theirs = next(Requirement(r) for r in md.requires("megatron-core") if r.startswith("transformer-engine"))
    assert ours.specifier == SpecifierSet(str(theirs.specifier)), (ours, theirs)
    for version in ("2.9.0", "2.11.0"):
        assert ours.specifier.contains(version)
    assert not ours.specifier.contains("2.12.0") and not ours.specifier.contains("2.8.0")
