"""The README's layout tree names every file of the package, and only files that exist."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tree():
    """Paths of the README's layout block, from the indentation (two spaces per level)."""
    block = ROOT.joinpath("README.md").read_text().split("## Layout", 1)[1].split("```", 2)[1]
    paths, stack = [], []
    for line in block.splitlines():
        m = re.match(r"^( *)(\S+)", line)
        if not m or not re.fullmatch(r"[\w.]+/?", m.group(2)):
            continue  # a continued description
        depth = len(m.group(1)) // 2
        if len(m.group(1)) > 2 * len(stack):
            continue  # a description's second line, indented past the tree
        del stack[depth:]
        paths.append("/".join(stack + [m.group(2).rstrip("/")]))
        if m.group(2).endswith("/"):
            stack.append(m.group(2).rstrip("/"))
    return paths


def test_the_layout_tree_matches_the_package():
    named = {p for p in _tree() if p.startswith("chord_megatron")}
    package = ROOT / "chord_megatron"
    actual = {
        str(p.relative_to(ROOT))
        for p in package.rglob("*")
        if "__pycache__" not in p.parts and (p.is_dir() or p.suffix == ".py")
    } | {"chord_megatron"}
    assert sorted(named - actual) == [], "the README names files that do not exist"
    assert sorted(actual - named) == [], "files missing from the README's layout tree"


def test_the_other_top_level_entries_exist():
    top = [p for p in _tree() if "/" not in p and p != "chord_megatron"]
    assert {"kernels", "configs", "launch", "docs", "tests"} <= set(top)
    for p in top:
        assert (ROOT / p).exists(), p
