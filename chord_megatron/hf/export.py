"""Megatron full tensors -> a Hugging Face folder that transformers and SGLang load.

export_hf(named, cfg, out_dir)  safetensors shards + index, config.json,
                                generation_config.json and the tokenizer files

The folder stands on its own: the tokenizer files are the source's (or data.tokenizer's), and
for the demo's character vocabulary a transformers tokenizer with the same ids; a config.json
made from the model section carries that tokenizer's bos / eos / pad ids, and so does
generation_config.json, which is what stops `generate()` at the end of an answer.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from ..config import Config
from ..data.tokenizer import CharTokenizer
from ..errors import ChordError
from ..weight_sync.convert import Layout, megatron_to_hf
from .config import ARCHITECTURES, check_model_config, hf_config

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
DEFAULT_SHARD_BYTES = 5 * 2**30
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def hf_config_dict(
    cfg: Config, *, dtype: torch.dtype, source: Optional[str | Path] = None, eos_token_id: Optional[int] = None
) -> Dict[str, Any]:
    """config.json contents: the source checkpoint's (checked against the model section) with
    the dtype updated, or one made from the model section when there is no source."""
    if source and (Path(source) / "config.json").is_file():
        check_model_config(cfg.model, source)
        config = json.loads((Path(source) / "config.json").read_text())
        config["torch_dtype"] = _DTYPE_NAMES[dtype]  # what transformers 4 and SGLang read
        if "dtype" in config:  # transformers 5's name
            config["dtype"] = _DTYPE_NAMES[dtype]
        return config
    hf = hf_config(cfg.model, eos_token_id)
    config = hf.to_dict()
    config["architectures"] = [ARCHITECTURES[hf.model_type]]
    config["dtype"] = _DTYPE_NAMES[dtype]
    return config


def export_hf(
    named: Iterable[Tuple[str, torch.Tensor]],
    cfg: Config,
    out_dir: str | Path,
    *,
    source: Optional[str | Path] = None,
    dtype: Optional[torch.dtype] = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    write: bool = True,
    eos_token_id: Optional[int] = None,
    overwrite: bool = False,
) -> Optional[Path]:
    """Write Megatron full tensors (engine.export_weights(): every rank must iterate it, so ranks
    other than the writer pass write=False and the stream is only drained) as a Hugging Face
    folder: safetensors shards + index, config.json, generation_config.json and the tokenizer
    files of `source` (default model.hf_path; data.tokenizer for the tokenizer when set; with
    neither, the demo's CharTokenizer saved for transformers).
    Tied embeddings are written without lm_head.weight, as transformers saves them.

    `out_dir` must be new or empty, or `overwrite` given (check_export_target); the folder is
    written beside it and renamed into place, so a failed export leaves nothing behind and an
    overwritten folder is replaced only once the new one is complete."""
    from ..train.model import resolve_dtype
    from ..weight_sync.disk import write_hf_files

    if not write:
        for _ in named:
            pass
        return None
    source = source if source is not None else cfg.model.hf_path
    out = Path(out_dir)
    check_export_target(out, cfg, overwrite=overwrite, source=source)
    dtype = dtype or resolve_dtype(cfg.model.dtype)
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"export dtype {dtype} is not one of {list(_DTYPE_NAMES)}")
    config = hf_config_dict(cfg, dtype=dtype, source=source, eos_token_id=eos_token_id)
    if not (source and (Path(source) / "config.json").is_file()):  # made here: the ids of the run's tokenizer
        config.update(_special_token_ids(cfg, source, eos_token_id))
    layout = Layout.from_model_config(cfg.model, cfg.megatron)
    hf_named = ((n, t.detach().to(device="cpu", dtype=dtype)) for n, t in megatron_to_hf(named, layout))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "partial")
    tmp.mkdir()
    try:
        write_hf_files(tmp, hf_named, max_shard_bytes=max_shard_bytes, config=config)
        copied = _copy_side_files(tmp, source, cfg.data.tokenizer)
        if not (cfg.data.tokenizer or source):  # the demo's characters: saved as a transformers tokenizer
            CharTokenizer().save_pretrained(tmp)
        if "generation_config.json" not in copied:
            gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=1))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own half-written folder; OUT is untouched
        raise
    return out


class ExportTargetError(ChordError):
    exit_code, kind = 2, "export-hf"


def check_export_target(
    out: str | Path,
    cfg: Config,
    *,
    overwrite: bool,
    source: Optional[str | Path] = None,
    checkpoint: Optional[str] = None,
) -> None:
    """Refuse an OUT that would lose someone's files: the model's own folder (hf_path, the
    tokenizer's folder, the checkpoint, or a folder holding one of them) always, and any other
    non-empty folder unless `overwrite`."""
    out = Path(out)
    target = out.resolve()
    source = source if source is not None else cfg.model.hf_path
    for what, path in (
        ("model.hf_path", source),
        ("data.tokenizer", cfg.data.tokenizer),
        ("the checkpoint", checkpoint),
    ):
        if path and (target == Path(path).resolve() or target in Path(path).resolve().parents):
            where = "is" if target == Path(path).resolve() else "holds"
            raise ExportTargetError(
                f"OUT {out} {where} {what} {path}: the export would replace the files it is made from; "
                "choose another folder"
            )
    if out.is_symlink():  # replacing it would replace the link, not the folder it names
        raise ExportTargetError(f"OUT {out} is a link: give the folder itself, {target}")
    if out.exists() and not out.is_dir():
        raise ExportTargetError(f"OUT {out} is a file, not a folder")
    # the folder is written beside OUT and renamed into place: its parent must be a folder we can write in
    parent = next(p for p in out.absolute().parents if p.exists())
    if not parent.is_dir():
        raise ExportTargetError(f"OUT {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportTargetError(f"OUT {out}: cannot write in {parent} (permission denied)")
    if out.is_dir() and not overwrite:
        entries = sum(1 for _ in out.iterdir())
        if entries:
            raise ExportTargetError(
                f"OUT {out} is not empty ({entries} entr{'y' if entries == 1 else 'ies'}): choose a new folder, "
                "or replace it with --overwrite"
            )


def _sibling(out: Path, what: str) -> Path:
    """A hidden, unused name beside `out` (same file system: renames are atomic)."""
    return out.with_name(f".{out.name}.{what}-{secrets.token_hex(4)}")


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder `tmp` to `out`; an existing `out` (empty, or overwritten: the
    caller checked) is moved aside first and removed only after the rename."""
    if not out.exists():
        tmp.rename(out)
        return
    old = _sibling(out, "replaced")
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old)


def _special_token_ids(cfg: Config, source: Optional[str | Path], eos_token_id: Optional[int]) -> Dict[str, int]:
    """bos / eos / pad of the tokenizer the run used (data.tokenizer, the source's, else the
    demo's characters: data/hf_tokenizer.load_tokenizer's rule), for a config.json made from
    the model section; `eos_token_id`, when given, wins."""
    from ..data.hf_tokenizer import HFTokenizer

    folder = cfg.data.tokenizer or source
    tok = HFTokenizer.from_pretrained(folder) if folder else CharTokenizer()
    ids = {"bos_token_id": tok.bos_id, "eos_token_id": eos_token_id if eos_token_id is not None else tok.eos_id}
    ids["pad_token_id"] = tok.pad_id
    return {k: int(v) for k, v in ids.items() if v is not None}


def _copy_side_files(out: Path, source: Optional[str | Path], tokenizer: Optional[str | Path]) -> List[str]:
    copied = []
    for folder, names in ((source, ("generation_config.json",)), (tokenizer or source, TOKENIZER_FILES)):
        if not folder:
            continue
        for name in names:
            f = Path(folder) / name
            if f.is_file():
                shutil.copy2(f, out / name)
                copied.append(name)
    return copied
