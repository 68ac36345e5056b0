"""A Hugging Face checkpoint's weights as a full Megatron state dict, read lazily.

    hf_state_dict(cfg)  model.hf_path as a (lazy) full Megatron state dict, for
                        MegatronEngine(cfg, full_state_dict=...) at any TP / PP

Weights are read with safetensors (one file, or shards listed in model.safetensors.index.json)
one decoder layer at a time, so a rank holds the layers it owns plus one layer in flight. The
tensor renaming and re-packing is weight_sync/convert.py (one mapping for weight sync, loading
and export).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Tuple

import torch

from ..config import Config
from ..weight_sync.convert import Layout, hf_to_megatron
from .config import HFCheckpointError, check_model_config

_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_M_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def safetensors_index(folder: str | Path) -> Dict[str, Path]:
    """HF tensor name -> the safetensors file holding it (sharded with an index, or one file)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
        if missing:
            raise HFCheckpointError(f"{index}: lists shards that are not there: {missing[:3]}")
        return {name: folder / f for name, f in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        bins = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (found {bins[:2]}: convert them to safetensors first)" if bins else ""
        raise HFCheckpointError(f"{folder}: no *.safetensors weights{hint}")
    from safetensors import safe_open

    out: Dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            out.update({name: f for name in st.keys()})
    return out


def _group(hf_name: str) -> int:
    m = _HF_LAYER.match(hf_name)
    return int(m.group(1)) if m else -1  # -1: embedding, final norm, lm_head


class HFWeights(Mapping[str, torch.Tensor]):
    """A checkpoint folder as a full Megatron state dict (train/weights.py names), read lazily:
    asking for a tensor reads its decoder layer (or the non-layer tensors) from disk, converts
    that group with hf_to_megatron and keeps it until another layer is asked for. Tensors keep
    the checkpoint's dtype; the engine casts when it copies them in. Transformer-engine names of
    the fused norms (linear_qkv.layer_norm_weight, linear_fc1.layer_norm_weight) are accepted."""

    def __init__(self, folder: str | Path, layout: Layout):
        from safetensors import safe_open

        self.folder, self.layout = Path(folder), layout
        self._file = safetensors_index(folder)
        self._groups: Dict[int, List[str]] = {}
        for name in self._file:
            self._groups.setdefault(_group(name), []).append(name)
        # Names (and a check that every tensor converts) from a pass over shapes only.
        meta: Dict[str, torch.Tensor] = {}
        for f in sorted(set(self._file.values())):
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():
                    if name in self._file and self._file[name] == f:
                        sl = st.get_slice(name)
                        meta[name] = torch.empty(
                            sl.get_shape(), dtype=_DTYPES.get(sl.get_dtype(), torch.float32), device="meta"
                        )
        self._owner: Dict[str, int] = {}
        for g, names in self._groups.items():
            items = [(n, meta[n]) for n in names if not (layout.tie_embeddings and n == "lm_head.weight")]
            for meg_name, _ in hf_to_megatron(items, layout):
                self._owner[meg_name] = g
        self._cache: "OrderedDict[int, Dict[str, torch.Tensor]]" = OrderedDict()

    def _load(self, g: int) -> Dict[str, torch.Tensor]:
        from safetensors import safe_open

        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        by_file: Dict[Path, List[str]] = {}
        for name in self._groups[g]:
            by_file.setdefault(self._file[name], []).append(name)
        tensors: Dict[str, torch.Tensor] = {}
        for f, names in by_file.items():
            with safe_open(str(f), framework="pt") as st:
                tensors.update({n: st.get_tensor(n) for n in names})
        order = sorted(tensors)  # deterministic; hf_to_megatron pairs q/k/v and gate/up itself
        converted = dict(hf_to_megatron(((n, tensors[n]) for n in order), self.layout))
        self._cache[g] = converted
        while len(self._cache) > 2:  # the non-layer tensors and one layer
            self._cache.popitem(last=False)
        return converted

    def __getitem__(self, name: str) -> torch.Tensor:
        name = _local_name(name)
        if name not in self._owner:
            raise KeyError(name)
        return self._load(self._owner[name])[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _local_name(name) in self._owner

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._owner, key=_canonical))

    def __len__(self) -> int:
        return len(self._owner)


# Transformer-engine layer specs fuse the pre-attention / pre-MLP norms into the next linear;
# their parameters are the local spec's norms under other names.
_TE_NAMES = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}


def _local_name(name: str) -> str:
    m = _M_LAYER.match(name)
    if m:
        rest = name[m.end() :]
        if rest in _TE_NAMES:
            return name[: m.end()] + _TE_NAMES[rest]
    return name


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _canonical(name: str) -> Tuple[int, int, str]:
    m = _M_LAYER.match(name)
    if name.startswith("embedding."):
        return (0, 0, name)
    if m:
        return (1, int(m.group(1)), name)
    return (2, 0, name)


def check_hf_checkpoint(cfg: Config) -> None:
    """model.hf_path as a whole, in seconds: config.json readable, an architecture we convert, the
    model section matching it, and safetensors weights present (HFCheckpointError / ConfigError
    naming the file or key). A run checks this before it builds anything."""
    check_model_config(cfg.model)
    safetensors_index(cfg.model.hf_path)


def hf_state_dict(cfg: Config, *, check: bool = True) -> HFWeights:
    """model.hf_path as a full Megatron state dict, after checking the model section against the
    checkpoint's config.json (ConfigError naming the key otherwise)."""
    if not cfg.model.hf_path:
        raise ValueError("hf_state_dict needs model.hf_path")
    if check:
        check_model_config(cfg.model)
    return HFWeights(cfg.model.hf_path, Layout.from_model_config(cfg.model, cfg.megatron))
