"""chord_megatron/algo stays pure: no Megatron, no torch.distributed, no I/O, no host syncs."""

import ast
import pathlib
import subprocess
import sys

ALGO = pathlib.Path(__file__).resolve().parents[2] / "chord_megatron" / "algo"
FORBIDDEN_MODULES = (
    "megatron",
    "torch.distributed",
    "os",
    "io",
    "pathlib",
    "json",
    "yaml",
    "subprocess",
    "socket",
    "requests",
    "aiohttp",
    "chord_megatron.train",
    "chord_megatron.rollout",
)


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module or ""


def test_algo_files_import_nothing_forbidden():
    files = sorted(ALGO.glob("*.py"))
    assert len(files) >= 5
    for f in files:
        tree = ast.parse(f.read_text())
        for name in _imports(tree):
            bad = [m for m in FORBIDDEN_MODULES if name == m or name.startswith(m + ".")]
            assert not bad, f"{f.name} imports {name}"
        calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        assert "item" not in calls, f"{f.name} calls .item() (a host sync)"
        names = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "open" not in names and "print" not in names, f"{f.name} does I/O"


def test_importing_algo_loads_no_megatron():
    code = "import sys, chord_megatron.algo; print(any(m.split('.')[0] == 'megatron' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
