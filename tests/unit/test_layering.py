"""The package's layers, read from the source (every import, including those inside functions):

* no import cycle between modules;
* nothing but cli.py imports commands/ (one module per `chord` subcommand, the top layer);
* algo/ imports no sibling; types.py, config.py, config_checks.py and errors.py import only algo/,
  errors.py and config_checks.py;
* product code never imports the test fakes (tests/support/), and cli.py is its one entry point.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "chord_megatron"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str:
    """The chord_megatron module an imported name lives in (its longest existing prefix)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in MODULES:
            return ".".join(parts[:i])
    return name


def _imports(module: str):
    """(imported module, line) of every import in `module`, relative ones resolved."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield _resolve(alias.name), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{alias.name}"
                yield (sub if sub in MODULES else _resolve(target)), node.lineno


def _graph():
    return {m: {t for t, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}


def test_the_package_is_where_this_test_reads_it():
    assert {"chord_megatron.cli", "chord_megatron.loop", "chord_megatron.algo.losses"} <= set(MODULES)
    assert len(MODULES) > 60


def test_no_import_cycles():
    graph = _graph()
    # Tarjan's strongly connected components; any component of more than one module is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_nothing_but_the_cli_imports_commands():
    for module in MODULES:
        if module == "chord_megatron.cli" or module.startswith("chord_megatron.commands"):
            continue
        for target, line in _imports(module):
            assert not target.startswith("chord_megatron.commands"), f"{module}:{line} imports {target}"


def test_the_inner_layers_import_no_sibling():
    inner = {"chord_megatron.types", "chord_megatron.config", "chord_megatron.config_checks", "chord_megatron.errors"}
    for module in MODULES:
        if module.startswith("chord_megatron.algo"):
            allowed = ("chord_megatron.algo",)
        elif module in inner:
            allowed = ("chord_megatron.algo", "chord_megatron.errors", "chord_megatron.config_checks")
        else:
            continue
        for target, line in _imports(module):
            if target.startswith("chord_megatron"):
                assert target.startswith(allowed), f"{module}:{line} imports {target}"


def test_product_code_never_imports_test_fakes_and_has_one_entry_point():
    for module, path in MODULES.items():
        for target, line in _imports(module):
            assert not target.split(".")[0] == "tests", f"{module}:{line} imports {target}"
        source = path.read_text()
        if module != "chord_megatron.cli":
            assert '__name__ == "__main__"' not in source, (
                f"{module} is a second entry point: make it a chord subcommand"
            )
