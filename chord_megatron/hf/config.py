"""config.json <-> ModelConfig for Qwen2 / Qwen2.5, Qwen3 and Llama-3 checkpoints.

    model_config_from_hf(path)     ModelConfig of a checkpoint folder, from its config.json
    check_model_config(cfg.model)  the config's model section against config.json: a ConfigError
                                   naming the first key that differs
    model_section_yaml(path)       a `model:` section for a config file (`chord config from-hf`)
    hf_config(cfg.model)           the other way: a transformers config for a model section

Everything numeric comes from config.json as transformers reads it -- rope theta, RMSNorm
epsilon, tied embeddings, head dim, rope scaling -- never from a default of ours: a missing rope
theta was the cause of a 7e-3 logit gap seen with a bridge. What megatron-core 0.16.1's GPTModel
cannot express is refused with the config.json key that asks for it:

    family    Megatron options                         refused
    qwen2     qkv_bias (always on in Qwen2)            use_sliding_window: true
    qwen3     qk_layernorm, head_dim != hidden/heads   attention_bias: true, use_sliding_window: true
    llama     rope_scaling llama3 (low/high freq       attention_bias / mlp_bias: true, llama3 scaling
              factors 1 / 4, original context 8192)    with other factors, yarn / dynamic / longrope
              or linear (position interpolation)
    all                                                hidden_act != silu, partial rotary, .bin weights
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Tuple

from ..config import ConfigError, ModelConfig
from ..errors import ChordError

FAMILIES = ("qwen2", "qwen3", "llama")
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
# megatron-core's llama3 rope scaling has these fixed (RotaryEmbedding._apply_scaling).
LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


class HFCheckpointError(ChordError, ValueError):
    exit_code = 2

    """A checkpoint folder this project cannot load as it is; the message names the file and key."""


def read_hf_config(path: str | Path):
    """transformers' config object of a local folder (no hub access)."""
    from transformers import AutoConfig

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise HFCheckpointError(f"{folder}: no config.json (model.hf_path must be a local Hugging Face folder)")
    try:  # transformers' own message names neither the line nor the column
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise HFCheckpointError(f"{folder / 'config.json'}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
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
                    f"rope scaling only with {key}={want:g}"
                )
        return float(theta), "llama3", factor
    if kind == "linear":
        return float(theta), "linear", factor
    raise HFCheckpointError(
        f"{where}: rope_scaling type {kind!r} is not supported by megatron-core 0.16.1's "
        "GPTModel here (supported: default, llama3, linear)"
    )


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
        raise HFCheckpointError(
            f"{where}: attention_bias=true also puts a bias on o_proj, which the Megatron model here does not have"
        )
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
    ("num_layers", "num_hidden_layers"),
    ("hidden_size", "hidden_size"),
    ("ffn_hidden_size", "intermediate_size"),
    ("num_attention_heads", "num_attention_heads"),
    ("num_query_groups", "num_key_value_heads"),
    ("head_dim", "head_dim"),
    ("vocab_size", "vocab_size"),
    ("rotary_base", "rope_theta"),
    ("norm_eps", "rms_norm_eps"),
    ("tie_embeddings", "tie_word_embeddings"),
    ("qkv_bias", "model_type"),
    ("qk_layernorm", "model_type"),
    ("rope_scaling", "rope_scaling.rope_type"),
    ("rope_scaling_factor", "rope_scaling.factor"),
)


def _resolved(m: ModelConfig, name: str):
    if name == "head_dim":
        return m.kv_channels
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
            raise ConfigError(
                source,
                f"model.{name}",
                f"{mine!r} in the config, but the checkpoint has {theirs!r} (from config.json "
                f"{key}); set model.{name}: {theirs!r}",
            )
    return ckpt


def model_section_yaml(path: str | Path, **overrides: Any) -> str:
    """A `model:` section for a config file, derived from the checkpoint."""
    import dataclasses

    import yaml

    m = model_config_from_hf(path, **overrides)
    d = {k: v for k, v in dataclasses.asdict(m).items() if v is not None}
    return yaml.safe_dump({"model": d}, sort_keys=False)


def hf_config(model_cfg, eos_token_id: Optional[int] = None):
    """A transformers config for chord_megatron.config.ModelConfig (fp32)."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    rope = {"rope_type": "default", "rope_theta": float(model_cfg.rotary_base)}
    scaling = getattr(model_cfg, "rope_scaling", "none")
    if scaling == "llama3":  # megatron-core's fixed llama3 parameters (train/model.py)
        rope.update(
            rope_type="llama3",
            factor=float(model_cfg.rope_scaling_factor),
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        )
    elif scaling == "linear":
        rope.update(rope_type="linear", factor=float(model_cfg.rope_scaling_factor))
    common = dict(
        vocab_size=model_cfg.vocab_size,
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.ffn_hidden_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_attention_heads,
        num_key_value_heads=model_cfg.num_query_groups,
        max_position_embeddings=model_cfg.max_seq_length,
        rms_norm_eps=model_cfg.norm_eps,
        tie_word_embeddings=model_cfg.tie_embeddings,
        # Without an explicit theta a loader may assume another default (a known 7e-3 logit gap).
        rope_parameters=rope,
        head_dim=model_cfg.kv_channels,
        eos_token_id=eos_token_id,
    )
    if getattr(model_cfg, "qk_layernorm", False):
        if model_cfg.qkv_bias:
            raise ValueError("model.qk_layernorm with model.qkv_bias: no Hugging Face architecture has both")
        return Qwen3Config(attention_bias=False, **common)
    if model_cfg.qkv_bias:
        return Qwen2Config(**common)
    return LlamaConfig(attention_bias=False, mlp_bias=False, **common)
