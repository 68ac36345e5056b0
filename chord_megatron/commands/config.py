"""`chord config show | reference | from-hf`: a resolved config, every key, a model section.

The reference is generated from config.py's dataclasses and their comments; the README embeds
it between markers and a test keeps the two identical, so the documented keys, defaults and
meanings cannot drift from the code. `from-hf DIR` prints the `model:` section of a Hugging
Face checkpoint folder, for a config file.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
import typing
from typing import Dict, Iterator, List, Tuple

from .. import config as C

BEGIN, END = "<!-- config-reference -->", "<!-- /config-reference -->"


def show(args: argparse.Namespace) -> int:
    sys.stdout.write(C.dump_config(C.load_config(args.config, args.overrides)))
    return 0


def print_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(reference())
    return 0


def from_hf(args: argparse.Namespace) -> int:
    from ..hf.config import model_section_yaml

    sys.stdout.write(model_section_yaml(args.folder))
    return 0


def _comment(cls, name: str) -> str:
    """A field's meaning: the comment lines right above it, then the comments on its own lines
    (a long field comment goes above it, where the formatter leaves it whole; a comment that
    heads a group of fields has a blank line after it)."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: Dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            above, i = [], node.lineno - 1
            while i >= 1 and lines[i - 1].strip().startswith("#"):
                above.insert(0, comments[i])
                i -= 1
            own = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
            return " ".join(above + own).replace("|", "\\|")
    return ""


def _walk(cls, prefix: str) -> Iterator[Tuple[str, object, str]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _walk(hints[f.name], prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        meaning = _comment(cls, f.name)
        if "choices" in f.metadata:  # config.one_of: the allowed values, from the field itself
            allowed = " \\| ".join(f"`{c}`" for c in f.metadata["choices"])
            meaning = allowed + (f"; {meaning}" if meaning else "")
        yield prefix + f.name, default, meaning


def reference() -> str:
    """Markdown: one table per section."""
    out: List[str] = []
    hints = typing.get_type_hints(C.Config)
    for section in dataclasses.fields(C.Config):
        tp = hints[section.name]
        if not dataclasses.is_dataclass(tp):
            continue
        doc = (inspect.getdoc(tp) or "").split("\n\n")[0].replace("\n", " ")
        out.append(f"**`{section.name}`**" + (f" — {doc}" if doc and not doc.startswith(tp.__name__) else ""))
        out.append("")
        out.append("| key | default | meaning |")
        out.append("|---|---|---|")
        for key, default, meaning in _walk(tp, ""):
            out.append(f"| `{key}` | `{default}` | {meaning} |")
        out.append("")
    out.append(
        "**`megatron`**, **`sglang`** — free-form: passed verbatim to Megatron's `TransformerConfig` "
        "and to SGLang's server arguments (and `sglang.router` to sglang-router)."
    )
    return "\n".join(out) + "\n"
