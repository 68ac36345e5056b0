"""SGLang's own request types, read from the installed wheel without importing SGLang.

`pip install --no-deps sglang==0.5.23` + `msgspec` puts the server's sources on disk; importing
them would pull CUDA torch and friends, so this module reads them instead:

  * `sglang/api/v1/api_types.py` is self-contained (msgspec only): loaded by file path, it is the
    exact contract gate /generate applies (`GenerateRequest.from_json_value`, 400 on violation);
  * `sglang/srt/managers/io_struct.py` (the control routes' bodies) imports torch, zmq and the
    runtime, so its classes are read with `ast` and rebuilt as strict msgspec structs;
  * `sglang/srt/entrypoints/http_server.py` is read with `ast` for its routes: path, methods, and
    the class each handler parses its body into.

Control-route bodies are checked more strictly than the server does: SGLang ignores unknown keys
there, which would turn a misspelt field into a silently ignored one.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib.util
import json
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from chord_megatron.rollout.sglang.protocol import ROUTES


class ContractError(ValueError):
    """A request body SGLang would reject (or silently misread)."""


class SGLangNotInstalled(RuntimeError):
    pass


def available() -> bool:
    """True when the sglang wheel and msgspec are installed (the contract can be checked)."""
    try:
        sglang_dir()
        import msgspec  # noqa: F401
    except (SGLangNotInstalled, ImportError):
        return False
    return True


@functools.lru_cache(maxsize=None)
def sglang_dir() -> Path:
    """The installed `sglang` package folder, found without executing its __init__."""
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        raise SGLangNotInstalled("sglang is not installed: pip install --no-deps sglang==0.5.23 msgspec")
    return Path(list(spec.submodule_search_locations)[0])


def sglang_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("sglang")


@functools.lru_cache(maxsize=None)
def load_api_types():
    """`sglang.api.v1.api_types` loaded by file path (needs only msgspec)."""
    path = sglang_dir() / "api" / "v1" / "api_types.py"
    spec = importlib.util.spec_from_file_location("_sglang_api_types", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------
# http_server.py: routes
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def http_routes() -> Dict[str, List[Tuple[str, Optional[str]]]]:
    """{path: [(METHOD, body class name or None), ...]} of every literal route of the server."""
    tree = ast.parse((sglang_dir() / "srt" / "entrypoints" / "http_server.py").read_text())
    routes: Dict[str, List[Tuple[str, Optional[str]]]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body_type = _body_type(node)
        for dec in node.decorator_list:
            if not (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute)):
                continue
            if not (isinstance(dec.func.value, ast.Name) and dec.func.value.id == "app"):
                continue
            if not dec.args or not isinstance(dec.args[0], ast.Constant) or not isinstance(dec.args[0].value, str):
                continue  # routes named by environment variables
            verb = dec.func.attr
            if verb == "api_route":
                methods = []
                for kw in dec.keywords:
                    if kw.arg == "methods":
                        methods = [e.value for e in kw.value.elts]
            elif verb in ("get", "post", "put", "delete"):
                methods = [verb.upper()]
            else:
                continue
            for m in methods:
                routes.setdefault(dec.args[0].value, []).append((m, body_type))
    return routes


def _body_type(fn: ast.AST) -> Optional[str]:
    """The class a handler's `obj` parameter is parsed into: `obj: X` or `Annotated[X, Body()]`."""
    for arg in fn.args.args:
        ann = arg.annotation
        if ann is None or arg.arg in ("request", "raw_request"):
            continue
        if isinstance(ann, ast.Subscript) and isinstance(ann.value, ast.Name) and ann.value.id == "Annotated":
            first = ann.slice.elts[0] if isinstance(ann.slice, ast.Tuple) else ann.slice
            if isinstance(first, ast.Name):
                return first.id
        if isinstance(ann, ast.Name) and ann.id not in ("Request", "str", "int", "float"):
            return ann.id
    return None


# ----------------------------------------------------------------------------------------------
# io_struct.py: request classes
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _io_struct_classes() -> Dict[str, ast.ClassDef]:
    tree = ast.parse((sglang_dir() / "srt" / "managers" / "io_struct.py").read_text())
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def io_struct_fields(name: str) -> Dict[str, Tuple[str, bool]]:
    """{field: (annotation source, has a default)} of an io_struct class, base classes first."""
    classes = _io_struct_classes()
    if name not in classes:
        raise ContractError(f"io_struct.py has no class {name}")
    out: Dict[str, Tuple[str, bool]] = {}
    node = classes[name]
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            out.update(io_struct_fields(base.id))
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            out[stmt.target.id] = (ast.unparse(stmt.annotation), stmt.value is not None)
    return out


class _Names(dict):
    """Names an annotation may use; anything SGLang-specific reads as Any."""

    def __missing__(self, key):
        return Any


def _eval_annotation(src: str):
    ns = _Names(
        {k: getattr(typing, k) for k in ("List", "Dict", "Optional", "Union", "Literal", "Any", "Tuple", "Annotated")}
    )
    ns.update({k: getattr(builtins, k) for k in ("int", "float", "str", "bool", "bytes", "list", "dict")})
    ns["Base64Bytes"] = lambda: "base64"  # only a marker in Annotated[...]
    return eval(src, {"__builtins__": {}}, ns)  # noqa: S307 - the source is SGLang's own file


@functools.lru_cache(maxsize=None)
def io_struct_type(name: str):
    """A strict msgspec struct mirroring io_struct's `name` (unknown fields rejected)."""
    import msgspec

    fields = []
    for fname, (src, has_default) in io_struct_fields(name).items():
        tp = _eval_annotation(src)
        fields.append((fname, tp, msgspec.UNSET) if has_default else (fname, tp))
    # Required fields first, as a struct demands.
    fields.sort(key=lambda f: len(f) == 3)
    return msgspec.defstruct(name, fields, kw_only=True, forbid_unknown_fields=True)


# ----------------------------------------------------------------------------------------------
# The check tests and debugging use
# ----------------------------------------------------------------------------------------------
def validate_request(route_name: str, body: Dict[str, Any]) -> None:
    """Raise ContractError unless SGLang 0.5.23 accepts `body` on ROUTES[route_name] as meant."""
    route = ROUTES[route_name]
    if route.request_type is None:
        if body:
            raise ContractError(f"{route.path} takes no body, got {sorted(body)}")
        return
    if route.request_type == "GenerateRequest":
        api = load_api_types()
        try:
            api.GenerateRequest.from_json_value(json.loads(json.dumps(body)))
        except api.JsonContractError as e:
            raise ContractError(f"{route.path}: {e}") from None
        return
    import msgspec

    try:
        msgspec.json.decode(json.dumps(body).encode(), type=io_struct_type(route.request_type))
    except msgspec.ValidationError as e:
        raise ContractError(f"{route.path} ({route.request_type}): {e}") from None


# ----------------------------------------------------------------------------------------------
# common.py: the server side of the weight-update group rendezvous
# ----------------------------------------------------------------------------------------------
def sglang_init_custom_process_group():
    """SGLang's own `init_custom_process_group` (what a server runs on
    /init_weights_update_group), compiled from the wheel's source alone: the trainer side of
    the rendezvous (weight_sync/nccl.join_group) is tested against it. Needs torch."""
    import torch

    source = (sglang_dir() / "srt" / "utils" / "common.py").read_text()
    tree = ast.parse(source)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "init_custom_process_group")
    module = ast.Module(body=[fn], type_ignores=[])
    release = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    namespace = {"torch": torch, "torch_release": release}
    exec(compile(module, "sglang/srt/utils/common.py", "exec"), namespace)  # noqa: S102 - SGLang's own code
    return namespace["init_custom_process_group"]


def sglang_allowed_pickle_globals() -> set:
    """The (module, name) pairs SGLang's SafeUnpickler lets a tensor payload reference."""
    tree = ast.parse((sglang_dir() / "srt" / "utils" / "common.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SafeUnpickler")
    for stmt in cls.body:
        if isinstance(stmt, ast.Assign) and any(getattr(t, "id", None) == "ALLOWED_GLOBALS" for t in stmt.targets):
            return set(ast.literal_eval(stmt.value))
    raise ContractError("SafeUnpickler.ALLOWED_GLOBALS not found in sglang/srt/utils/common.py")
