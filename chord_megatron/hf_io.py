"""Hugging Face checkpoints in and out: Qwen2 / Qwen2.5, Qwen3 and Llama-3 folders <-> the Megatron model.

    model_config_from_hf(path)            ModelConfig of a checkpoint folder, from its config.json
    check_model_config(cfg.model)         the config's model section against config.json: a ConfigError
                                          naming the first key that differs
    hf_state_dict(cfg)                    the checkpoint as a (lazy) full Megatron state dict, for
                                          MegatronEngine(cfg, full_state_dict=...) at any TP / PP
    export_hf(named, cfg, out_dir)        Megatron full tensors -> a folder transformers and SGLang load
    run_export_hf(cfg, ckpt_dir, out_dir) a training checkpoint -> such a folder (`chord export-hf`)

The tensor renaming and re-packing is weight_sync/convert.py (one mapping for weight sync, loading
and export). Everything numeric comes from config.json as transformers reads it -- rope theta,
RMSNorm epsilon, tied embeddings, head dim, rope scaling -- never from a default of ours: a
missing rope theta was the cause of a 7e-3 logit gap seen with a bridge. What megatron-core
0.16.1's GPTModel cannot express is refused with the config.json key that asks for it:

    family    Megatron options                         refused
    qwen2     qkv_bias (always on in Qwen2)            use_sliding_window: true
    qwen3     qk_layernorm, head_dim != hidden/heads   attention_bias: true, use_sliding_window: true
    llama     rope_scaling llama3 (low/high freq       attention_bias / mlp_bias: true, llama3 scaling
              factors 1 / 4, original context 8192)    with other factors, yarn / dynamic / longrope
              or linear (position interpolation)
    all                                                hidden_act != silu, partial rotary, .bin weights

Weights are read with safetensors (one file, or shards listed in model.safetensors.index.json)
one decoder layer at a time, so a rank holds the layers it owns plus one layer in flight.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import torch

from .config import Config, ConfigError, ModelConfig
from .weight_sync.convert import Layout, hf_to_megatron, megatron_to_hf

FAMILIES = ("qwen2", "qwen3", "llama")
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
# megatron-core's llama3 rope scaling has these fixed (RotaryEmbedding._apply_scaling).
LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json")  # fmt: skip
DEFAULT_SHARD_BYTES = 5 * 2**30


class HFCheckpointError(ValueError):
    """A checkpoint folder this project cannot load as it is; the message names the file and key."""


# ----------------------------------------------------------------------------------------------
# config.json -> ModelConfig
# ----------------------------------------------------------------------------------------------
def read_hf_config(path: str | Path):
    """transformers' config object of a local folder (no hub access)."""
    from transformers import AutoConfig

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise HFCheckpointError(f"{folder}: no config.json (model.hf_path must be a local Hugging Face folder)")
    return AutoConfig.from_pretrained(str(folder), local_files_only=True)


def _rope(hf, where: str) -> Tuple[float, str, float]:
    """(theta, scaling kind, factor) of a transformers config, refusing what Megatron lacks."""
    params = getattr(hf, "rope_parameters", None)
    if params is None:  # transformers < 5 keeps them as two attributes
        params = dict(getattr(hf, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(hf, "rope_theta", None))
    if params and all(isinstance(v, dict) for v in params.values()):
        raise HFCheckpointError(f"{where}: per-layer-type rope parameters are not supported")
    theta = params.get("rope_theta")
    if theta is None:  # transformers fills in its class default; never assume one of ours
        raise HFCheckpointError(f"{where}: rope_theta is missing")
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise HFCheckpointError(f"{where}: partial_rotary_factor={params['partial_rotary_factor']} is not supported")
    if kind == "default":
        return float(theta), "none", 8.0
    factor = float(params.get("factor", 0.0))
    if kind == "llama3":
        for key, want in LLAMA3_FIXED.items():
            if key in params and float(params[key]) != want:
                raise HFCheckpointError(
                    f"{where}: rope_scaling.{key}={params[key]}: megatron-core 0.16.1's GPTModel applies llama3 "
                    f"rope scaling only with {key}={want:g}")
        return float(theta), "llama3", factor
    if kind == "linear":
        return float(theta), "linear", factor
    raise HFCheckpointError(f"{where}: rope_scaling type {kind!r} is not supported by megatron-core 0.16.1's "
                            "GPTModel here (supported: default, llama3, linear)")  # fmt: skip


def model_config_from_hf(path: str | Path, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a Qwen2 / Qwen3 / Llama checkpoint folder. max_seq_length is the
    checkpoint's max_position_embeddings unless overridden (e.g. max_seq_length=20480)."""
    hf = read_hf_config(path)
    where = str(Path(path) / "config.json")
    family = getattr(hf, "model_type", None)
    if family not in FAMILIES:
        raise HFCheckpointError(f"{where}: model_type {family!r} is not supported (supported: {', '.join(FAMILIES)})")
    act = getattr(hf, "hidden_act", "silu")
    if act != "silu":
        raise HFCheckpointError(f"{where}: hidden_act={act!r}: only silu (SwiGLU) is supported")
    if getattr(hf, "use_sliding_window", False):
        raise HFCheckpointError(f"{where}: use_sliding_window=true: sliding-window attention is not supported")
    if family in ("llama", "qwen3") and getattr(hf, "attention_bias", False):
        raise HFCheckpointError(f"{where}: attention_bias=true also puts a bias on o_proj, which the Megatron model "
                                "here does not have")  # fmt: skip
    if getattr(hf, "mlp_bias", False):
        raise HFCheckpointError(f"{where}: mlp_bias=true is not supported")
    theta, scaling, factor = _rope(hf, where)
    heads = int(hf.num_attention_heads)
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
    fields = dict(
        name=Path(path).name,
        hf_path=str(path),
        num_layers=int(hf.num_hidden_layers),
        hidden_size=int(hf.hidden_size),
        ffn_hidden_size=int(hf.intermediate_size),
        num_attention_heads=heads,
        num_query_groups=int(getattr(hf, "num_key_value_heads", None) or heads),
        vocab_size=int(hf.vocab_size),
        max_seq_length=int(hf.max_position_embeddings),
        rotary_base=theta,
        norm_eps=float(hf.rms_norm_eps),
        qkv_bias=family == "qwen2",  # Qwen2 hard-codes bias=True on q/k/v
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        head_dim=None if head_dim * heads == hf.hidden_size else int(head_dim),
        qk_layernorm=family == "qwen3",
        rope_scaling=scaling,
        rope_scaling_factor=factor if scaling != "none" else 8.0,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


# The architecture fields a config's model section must share with the checkpoint, and the
# config.json key each comes from (for the error message).
_CHECKED = (
    ("num_layers", "num_hidden_layers"), ("hidden_size", "hidden_size"), ("ffn_hidden_size", "intermediate_size"),
    ("num_attention_heads", "num_attention_heads"), ("num_query_groups", "num_key_value_heads"),
    ("head_dim", "head_dim"), ("vocab_size", "vocab_size"), ("rotary_base", "rope_theta"),
    ("norm_eps", "rms_norm_eps"), ("tie_embeddings", "tie_word_embeddings"), ("qkv_bias", "model_type"),
    ("qk_layernorm", "model_type"), ("rope_scaling", "rope_scaling.rope_type"),
    ("rope_scaling_factor", "rope_scaling.factor"),
)  # fmt: skip


def _resolved(m: ModelConfig, name: str):
    if name == "head_dim":
        return m.head_dim or m.hidden_size // m.num_attention_heads
    return getattr(m, name)


def check_model_config(model: ModelConfig, path: Optional[str | Path] = None) -> ModelConfig:
    """Raise ConfigError (source: the checkpoint's config.json, key: model.<field>) for the first
    architecture field of `model` that differs from the checkpoint at `path` (default
    model.hf_path); returns the checkpoint's ModelConfig."""
    path = path or model.hf_path
    if not path:
        raise ValueError("check_model_config needs a checkpoint folder (model.hf_path)")
    ckpt = model_config_from_hf(path)
    source = str(Path(path) / "config.json")
    for name, key in _CHECKED:
        if name == "rope_scaling_factor" and ckpt.rope_scaling == "none":
            continue
        mine, theirs = _resolved(model, name), _resolved(ckpt, name)
        same = math.isclose(mine, theirs, rel_tol=1e-9) if isinstance(theirs, float) else mine == theirs
        if not same:
            raise ConfigError(source, f"model.{name}",
                              f"{mine!r} in the config, but the checkpoint has {theirs!r} (from config.json "
                              f"{key}); set model.{name}: {theirs!r}")  # fmt: skip
    return ckpt


def model_section_yaml(path: str | Path, **overrides: Any) -> str:
    """A `model:` section for a config file, derived from the checkpoint."""
    import dataclasses

    import yaml

    m = model_config_from_hf(path, **overrides)
    d = {k: v for k, v in dataclasses.asdict(m).items() if v is not None}
    return yaml.safe_dump({"model": d}, sort_keys=False)


# ----------------------------------------------------------------------------------------------
# Weights in
# ----------------------------------------------------------------------------------------------
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
                        meta[name] = torch.empty(sl.get_shape(), dtype=_DTYPES.get(sl.get_dtype(), torch.float32), device="meta")
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
_TE_NAMES = {"self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
             "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight"}  # fmt: skip


def _local_name(name: str) -> str:
    m = _M_LAYER.match(name)
    if m:
        rest = name[m.end():]
        if rest in _TE_NAMES:
            return name[:m.end()] + _TE_NAMES[rest]
    return name


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _canonical(name: str) -> Tuple[int, int, str]:
    m = _M_LAYER.match(name)
    if name.startswith("embedding."):
        return (0, 0, name)
    if m:
        return (1, int(m.group(1)), name)
    return (2, 0, name)


def hf_state_dict(cfg: Config, *, check: bool = True) -> HFWeights:
    """model.hf_path as a full Megatron state dict, after checking the model section against the
    checkpoint's config.json (ConfigError naming the key otherwise)."""
    if not cfg.model.hf_path:
        raise ValueError("hf_state_dict needs model.hf_path")
    if check:
        check_model_config(cfg.model)
    return HFWeights(cfg.model.hf_path, Layout.from_model_config(cfg.model, cfg.megatron))


# ----------------------------------------------------------------------------------------------
# Weights out
# ----------------------------------------------------------------------------------------------
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def hf_config_dict(cfg: Config, *, dtype: torch.dtype, source: Optional[str | Path] = None,
                   eos_token_id: Optional[int] = None) -> Dict[str, Any]:  # fmt: skip
    """config.json contents: the source checkpoint's (checked against the model section) with
    the dtype updated, or one made from the model section when there is no source."""
    if source and (Path(source) / "config.json").is_file():
        check_model_config(cfg.model, source)
        config = json.loads((Path(source) / "config.json").read_text())
        config["torch_dtype"] = _DTYPE_NAMES[dtype]  # what transformers 4 and SGLang read
        if "dtype" in config:  # transformers 5's name
            config["dtype"] = _DTYPE_NAMES[dtype]
        return config
    from .rollout.inprocess import hf_config

    hf = hf_config(cfg.model, eos_token_id)
    config = hf.to_dict()
    config["architectures"] = [ARCHITECTURES[hf.model_type]]
    config["dtype"] = _DTYPE_NAMES[dtype]
    return config


def export_hf(named: Iterable[Tuple[str, torch.Tensor]], cfg: Config, out_dir: str | Path, *,
              source: Optional[str | Path] = None, dtype: Optional[torch.dtype] = None,
              max_shard_bytes: int = DEFAULT_SHARD_BYTES, write: bool = True,
              eos_token_id: Optional[int] = None) -> Optional[Path]:  # fmt: skip
    """Write Megatron full tensors (engine.export_weights(): every rank must iterate it, so ranks
    other than the writer pass write=False and the stream is only drained) as a Hugging Face
    folder: safetensors shards + index, config.json, generation_config.json and the tokenizer
    files of `source` (default model.hf_path; data.tokenizer for the tokenizer when set).
    Tied embeddings are written without lm_head.weight, as transformers saves them."""
    from .train.model import resolve_dtype
    from .weight_sync.disk import write_hf_checkpoint

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


def run_export_hf(cfg: Config, checkpoint_dir: str, out_dir: str) -> int:
    """`chord export-hf CONFIG CHECKPOINT OUT`: build the trainer's model for `cfg` (any TP / PP
    layout, every rank of the job calls this), restore the weights of a training checkpoint
    (a step folder, or a root with a `latest` pointer) and write them as a Hugging Face folder."""
    from .train.engine import MegatronEngine

    engine = MegatronEngine(cfg)
    step, _ = engine.load(checkpoint_dir)
    rank0 = engine.par.rank == 0
    out = export_hf(engine.export_weights(), cfg, out_dir, write=rank0)
    if rank0:
        print(f"exported step {step} of {checkpoint_dir} to {out}")
    return 0


if __name__ == "__main__":  # python -m chord_megatron.hf_io CHECKPOINT_DIR: print a model section
    if len(sys.argv) != 2:
        sys.exit("usage: python -m chord_megatron.hf_io HF_CHECKPOINT_DIR")
    sys.stdout.write(model_section_yaml(sys.argv[1]))
