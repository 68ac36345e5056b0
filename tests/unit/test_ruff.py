"""The repository passes ruff (ruff.toml) as CI runs it: the linter and the formatter. Ruff
comes with the test extra (setup.py); a tree that fails here is fixed by `ruff check --fix .`
and `ruff format .`."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args, "."], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check():
    out = _ruff("check")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format():
    out = _ruff("format", "--check")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_reads_every_test_folder():
    """tests/dist is in ruff's default excludes (`dist`); ruff.toml takes it back."""
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--show-files", "."], cwd=ROOT, capture_output=True, text=True
    )
    files = out.stdout
    for folder in ("tests/dist", "tests/unit", "tests/e2e", "tests/support", "kernels/tests", "chord_megatron/train"):
        assert folder + "/" in files, f"ruff does not read {folder}"


def test_no_formatter_escape_without_a_reason():
    """`# fmt: skip` / `# fmt: off` only with a reason after it, e.g. `# fmt: skip (a table)`."""
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    bare = []
    for name in tracked:
        path = ROOT / name
        if not path.is_file():
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"#\s*fmt:\s*(skip|off)\s*$", line):
                bare.append(f"{name}:{i}")
    assert not bare, f"formatter escapes without a reason: {bare[:10]}"
