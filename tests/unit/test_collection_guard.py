"""The suite's own safety nets (root conftest.py + pytest.ini), exercised on a throw-away tree.

pytest once skipped tests/dist silently (its default norecursedirs holds `dist`), so CI never ran
the layout-parity tests. These tests run pytest, configured exactly as this repository is, on a
small git tree and check: a `dist` folder is collected; a folder that collects nothing fails the
whole-suite run by name; the CPU mode hides the GPU from every test; `gpu` tests are skipped, not
passed, where they cannot run.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tree(tmp_path: Path, files: dict) -> Path:
    for name in ("pytest.ini", "conftest.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    # Only the two test roots this repository names; kernels/tests need not exist here.
    ini = (tmp_path / "pytest.ini").read_text().replace("testpaths = tests kernels/tests", "testpaths = tests")
    (tmp_path / "pytest.ini").write_text(ini)
    for rel, body in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    return tmp_path


def _pytest(tree: Path, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args]
    return subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=120)


PASSING = "def test_ok():\n    assert 1 + 1 == 2\n"


def test_dist_folder_is_collected(tmp_path):
    tree = _tree(tmp_path, {"tests/dist/test_layouts.py": PASSING, "tests/unit/test_x.py": PASSING})
    out = _pytest(tree)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed" in out.stdout


def test_a_folder_that_collects_nothing_fails_the_run_by_name(tmp_path):
    # `build` stays in norecursedirs (pytest's default), so a test folder of that name is skipped.
    tree = _tree(tmp_path, {"tests/build/test_lost.py": PASSING, "tests/unit/test_x.py": PASSING})
    out = _pytest(tree)
    assert out.returncode != 0
    assert "tests/build" in out.stdout + out.stderr
    # Selecting part of the suite on purpose is not an error.
    assert _pytest(tree, "tests/unit").returncode == 0


def test_cpu_mode_hides_the_gpu_and_interprets_triton_in_every_test(tmp_path):
    body = """
        import os, subprocess, sys

        def test_env():
            assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
            assert os.environ["TRITON_INTERPRET"] == "1"
            # and in the processes tests start (torchrun / mp.spawn ranks, the chord CLI)
            child = subprocess.run([sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'] == '')"],
                                   capture_output=True, text=True)
            assert child.stdout.strip() == "True"
    """
    out = _pytest(_tree(tmp_path, {"tests/unit/test_env.py": body}))
    assert out.returncode == 0, out.stdout + out.stderr


def test_gpu_tests_are_reported_skipped_never_passed_without_a_gpu(tmp_path):
    body = """
        import pytest

        @pytest.mark.gpu
        def test_needs_gpu():
            import torch
            assert torch.cuda.is_available()
    """
    tree = _tree(tmp_path, {"tests/gpu/test_g.py": body})
    for args in ((), ("-m", "gpu")):
        out = _pytest(tree, "-rs", *args)
        if Path("/proc/driver/nvidia/gpus").is_dir() and args:
            continue  # GPU mode on a GPU host runs it for real
        assert out.returncode == 0, out.stdout + out.stderr
        assert "1 skipped" in out.stdout and "passed" not in out.stdout, out.stdout
