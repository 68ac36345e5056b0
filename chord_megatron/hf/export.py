"""Megatron full tensors -> a Hugging Face folder that transformers and SGLang load.

export_hf(named, cfg, out_dir)  safetensors shards + index, config.json,
                                generation_config.json and the tokenizer files
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from ..config import Config
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
) -> Optional[Path]:
    """Write Megatron full tensors (engine.export_weights(): every rank must iterate it, so ranks
    other than the writer pass write=False and the stream is only drained) as a Hugging Face
    folder: safetensors shards + index, config.json, generation_config.json and the tokenizer
    files of `source` (default model.hf_path; data.tokenizer for the tokenizer when set).
    Tied embeddings are written without lm_head.weight, as transformers saves them."""
    from ..train.model import resolve_dtype
    from ..weight_sync.disk import write_hf_checkpoint

    if not write:
        for _ in named:
            pass
        return None
    source = source if source is not None else cfg.model.hf_path
    dtype = dtype or resolve_dtype(cfg.model.dtype)
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"export dtype {dtype} is not one of {list(_DTYPE_NAMES)}")
    config = hf_config_dict(cfg, dtype=dtype, source=source, eos_token_id=eos_token_id)
    layout = Layout.from_model_config(cfg.model, cfg.megatron)
    hf_named = ((n, t.detach().to(device="cpu", dtype=dtype)) for n, t in megatron_to_hf(named, layout))
    out = write_hf_checkpoint(Path(out_dir), hf_named, max_shard_bytes=max_shard_bytes, config=config)
    copied = _copy_side_files(out, source, cfg.data.tokenizer)
    if "generation_config.json" not in copied:
        gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
        (out / "generation_config.json").write_text(json.dumps(gen, indent=1))
    return out


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
