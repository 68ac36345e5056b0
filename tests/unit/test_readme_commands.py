"""Every `chord` command in the documentation's bash blocks is one the CLI accepts: its flags parse,
its config file exists and its key=value overrides (per variant too) name real keys. A renamed
flag or key then fails here, not in a reader's shell."""

import pathlib
import re
import shlex

import pytest

from chord_megatron.cli import build_parser
from chord_megatron.commands.compare_variants import parse_variant_overrides, variants
from chord_megatron.config import load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "launch" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def chord_commands(text: str):
    """The argument lists of the `chord` (or `.../bin/chord`) commands in ```bash blocks; shell
    loops' `$k` read as 1, comments dropped."""
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).replace("$k", "1")
            for part in re.split(r"&&|\|\||;|(?<!&)&(?!&)", line):
                if "chord" not in part:
                    continue
                words = shlex.split(part)
                at = [i for i, w in enumerate(words) if w == "chord" or w.endswith("/bin/chord")]
                if at:
                    yield words[at[0] + 1 :]


COMMANDS = [(doc.relative_to(ROOT).as_posix(), argv) for doc in DOCS for argv in chord_commands(doc.read_text())]


def test_the_commands_are_found():
    found = {" ".join(argv[:2]) for _, argv in COMMANDS}
    assert {"train configs/demo-expert.yaml", "compare configs/demo-expert.yaml", "doctor --trainer-only"} <= found
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("doc,argv", COMMANDS, ids=[f"{d}: chord {' '.join(a)[:60]}" for d, a in COMMANDS])
def test_a_documented_command_parses_and_names_real_keys(doc, argv):
    args = build_parser().parse_args(argv)  # a bad flag: SystemExit
    config = getattr(args, "config", None)
    if not config or not config.endswith(".yaml") or config.isupper():  # CONFIG: a placeholder
        return
    assert (ROOT / config).is_file(), f"{doc}: no config file {config}"
    cfg = load_config(str(ROOT / config), list(args.overrides))  # a bad key: ConfigError
    table = variants(cfg)
    for name, extra in parse_variant_overrides(getattr(args, "set", None) or [], list(table)).items():
        load_config(str(ROOT / config), [*args.overrides, *table[name], *extra])
