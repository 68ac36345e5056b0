"""Megatron GPTModel (full, unsharded) parameters <-> Hugging Face Llama/Qwen2 parameters.

Pure tensor reshuffling, streamed: names and layouts in, names and layouts out, no I/O.

    Megatron (train/weights.py)                      Hugging Face
    embedding.word_embeddings.weight                 model.embed_tokens.weight
    decoder.layers.i.input_layernorm.weight          model.layers.i.input_layernorm.weight
    decoder.layers.i.self_attention.linear_qkv.*     model.layers.i.self_attn.{q,k,v}_proj.*
        packed per KV group g: [q heads of g; k of g; v of g]
    decoder.layers.i.self_attention.linear_proj.weight  model.layers.i.self_attn.o_proj.weight
    decoder.layers.i.self_attention.{q,k}_layernorm.weight  model.layers.i.self_attn.{q,k}_norm.weight (Qwen3)
    decoder.layers.i.pre_mlp_layernorm.weight        model.layers.i.post_attention_layernorm.weight
    decoder.layers.i.mlp.linear_fc1.weight = [gate; up]  model.layers.i.mlp.{gate,up}_proj.weight
    decoder.layers.i.mlp.linear_fc2.weight           model.layers.i.mlp.down_proj.weight
    decoder.final_layernorm.weight                   model.norm.weight
    output_layer.weight (untied only)                lm_head.weight

Transformer-engine layer specs fuse the norms into the next linear
(`linear_qkv.layer_norm_weight`, `linear_fc1.layer_norm_weight`); those names are accepted too.
With tied embeddings there is no output layer: lm_head is left out (HF ties it on load), or
emitted as a copy of the embedding when a consumer wants it. Any name not in this table is an
error, never silently dropped: a sync that skips a tensor serves a mix of old and new weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, Tuple

import torch

Named = Iterable[Tuple[str, torch.Tensor]]

_LAYER_M = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_LAYER_H = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

# Per-layer renames that need no reshaping (Megatron suffix -> HF suffix).
_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",  # TE spec
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",  # Qwen3 per-head q/k RMSNorm
    "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm.weight",  # TE spec
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}
_GLOBAL_RENAMES = {
    "embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "decoder.final_layernorm.weight": "model.norm.weight",
    "output_layer.weight": "lm_head.weight",
}
# HF tensors that carry no weights (older checkpoints saved RoPE's inverse frequencies).
_HF_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


@dataclass(frozen=True)
class Layout:
    """The attention shape the QKV packing depends on, and whether embeddings are tied."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_embeddings: bool

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads={self.num_kv_heads} does not divide num_heads={self.num_heads}")

    @classmethod
    def from_model_config(cls, model_cfg, megatron: Dict = None) -> "Layout":
        """From chord_megatron.config.ModelConfig (and a `megatron:` kv_channels override)."""
        head_dim = (megatron or {}).get("kv_channels") or model_cfg.kv_channels
        return cls(model_cfg.num_attention_heads, model_cfg.num_query_groups, int(head_dim), model_cfg.tie_embeddings)

    @property
    def q_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads


def split_qkv(packed: torch.Tensor, layout: Layout) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's fused QKV weight [G*(q+2)*d, H] (or bias [G*(q+2)*d]) -> HF q, k, v."""
    g, q, d = layout.num_kv_heads, layout.q_per_group, layout.head_dim
    if packed.shape[0] != g * (q + 2) * d:
        raise ValueError(f"linear_qkv has {packed.shape[0]} rows, expected {g}*({q}+2)*{d} = {g * (q + 2) * d}")
    rest = packed.shape[1:]
    per_group = packed.reshape(g, q + 2, d, *rest)
    query = per_group[:, :q].reshape(g * q * d, *rest)
    key = per_group[:, q].reshape(g * d, *rest)
    value = per_group[:, q + 1].reshape(g * d, *rest)
    return query.contiguous(), key.contiguous(), value.contiguous()


def pack_qkv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: Layout) -> torch.Tensor:
    """HF q, k, v -> Megatron's fused QKV, the inverse of split_qkv."""
    g, q, d = layout.num_kv_heads, layout.q_per_group, layout.head_dim
    rest = query.shape[1:]
    if query.shape[0] != g * q * d or key.shape[0] != g * d or value.shape[0] != g * d:
        raise ValueError(
            f"q/k/v rows {query.shape[0]}/{key.shape[0]}/{value.shape[0]} do not fit "
            f"{layout.num_heads} heads, {g} KV heads of dim {d}"
        )
    per_group = torch.cat(
        [query.reshape(g, q, d, *rest), key.reshape(g, 1, d, *rest), value.reshape(g, 1, d, *rest)], dim=1
    )
    return per_group.reshape(g * (q + 2) * d, *rest).contiguous()


def megatron_to_hf(
    named: Named, layout: Layout, *, lm_head_when_tied: bool = False
) -> Iterator[Tuple[str, torch.Tensor]]:
    """Stream (HF name, tensor) for Megatron full parameters, in the input's order."""
    for name, t in named:
        m = _LAYER_M.match(name)
        if m:
            i, rest = m.group(1), m.group(2)
            pre = f"model.layers.{i}."
            if rest in _LAYER_RENAMES:
                yield pre + _LAYER_RENAMES[rest], t
            elif rest in ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias"):
                kind = rest.rsplit(".", 1)[1]
                for proj, part in zip(("q_proj", "k_proj", "v_proj"), split_qkv(t, layout)):
                    yield f"{pre}self_attn.{proj}.{kind}", part
            elif rest == "mlp.linear_fc1.weight":
                if t.shape[0] % 2:
                    raise ValueError(f"{name}: {t.shape[0]} rows cannot be [gate; up]")
                gate, up = t.chunk(2, dim=0)
                yield pre + "mlp.gate_proj.weight", gate.contiguous()
                yield pre + "mlp.up_proj.weight", up.contiguous()
            else:
                raise ValueError(f"megatron_to_hf: no Hugging Face name for {name!r}")
        elif name in _GLOBAL_RENAMES:
            if name == "output_layer.weight" and layout.tie_embeddings:
                raise ValueError("megatron_to_hf: output_layer.weight given, but the embeddings are tied")
            yield _GLOBAL_RENAMES[name], t
            if name == "embedding.word_embeddings.weight" and layout.tie_embeddings and lm_head_when_tied:
                yield "lm_head.weight", t
        else:
            raise ValueError(f"megatron_to_hf: no Hugging Face name for {name!r}")


_HF_TO_M_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attn.o_proj.weight": "self_attention.linear_proj.weight",
    "self_attn.q_norm.weight": "self_attention.q_layernorm.weight",
    "self_attn.k_norm.weight": "self_attention.k_layernorm.weight",
    "post_attention_layernorm.weight": "pre_mlp_layernorm.weight",
    "mlp.down_proj.weight": "mlp.linear_fc2.weight",
}
_HF_GLOBAL = {v: k for k, v in _GLOBAL_RENAMES.items()}


def hf_to_megatron(named: Named, layout: Layout) -> Iterator[Tuple[str, torch.Tensor]]:
    """Stream (Megatron name, tensor) for HF parameters (local-spec names). q/k/v and gate/up of a
    layer are held until all parts have arrived; anything left incomplete at the end raises."""
    pending: Dict[Tuple[str, str], Dict[str, torch.Tensor]] = {}
    embed = head = None
    for name, t in named:
        if _HF_IGNORED.match(name):
            continue
        m = _LAYER_H.match(name)
        if m:
            i, rest = m.group(1), m.group(2)
            pre = f"decoder.layers.{i}."
            if rest in _HF_TO_M_RENAMES:
                yield pre + _HF_TO_M_RENAMES[rest], t
                continue
            qkv = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
            mlp = re.match(r"^mlp\.(gate|up)_proj\.weight$", rest)
            if qkv:
                key, part, need = (pre + "self_attention.linear_qkv." + qkv.group(2), "qkv"), qkv.group(1), "qkv"
            elif mlp:
                key, part, need = (pre + "mlp.linear_fc1.weight", "fc1"), mlp.group(1), ("gate", "up")
            else:
                raise ValueError(f"hf_to_megatron: no Megatron name for {name!r}")
            parts = pending.setdefault(key, {})
            if part in parts:
                raise ValueError(f"hf_to_megatron: {name} given twice")
            parts[part] = t
            if all(p in parts for p in need):
                del pending[key]
                if key[1] == "qkv":
                    yield key[0], pack_qkv(parts["q"], parts["k"], parts["v"], layout)
                else:
                    yield key[0], torch.cat([parts["gate"], parts["up"]], dim=0).contiguous()
        elif name == "lm_head.weight" and layout.tie_embeddings:
            head = t  # tied: not a parameter of its own; checked against the embedding below
        elif name in _HF_GLOBAL:
            if name == "model.embed_tokens.weight":
                embed = t
            yield _HF_GLOBAL[name], t
        else:
            raise ValueError(f"hf_to_megatron: no Megatron name for {name!r}")
    if pending:
        missing = {
            k[0]: sorted(set(("q", "k", "v") if k[1] == "qkv" else ("gate", "up")) - set(v)) for k, v in pending.items()
        }
        raise ValueError(f"hf_to_megatron: incomplete fused tensors {missing}")
    if head is not None and embed is not None and not torch.equal(head, embed):
        raise ValueError("hf_to_megatron: tied embeddings, but lm_head.weight differs from model.embed_tokens.weight")
