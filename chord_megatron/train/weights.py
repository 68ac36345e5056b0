"""Full (unsharded) parameters <-> this rank's Megatron shards.

A *full state dict* is what a TP=1, PP=1 model holds: Megatron parameter names with global
layer indices, e.g.

    embedding.word_embeddings.weight              [V, H]
    decoder.layers.{i}.input_layernorm.weight     [H]                RMSNorm gain
    decoder.layers.{i}.self_attention.linear_qkv.weight
                                                  [G * (q + 2) * d, H]  per KV group g (G groups,
                                                  q = heads / G query heads of head dim d):
                                                  [q heads of g; k of g; v of g]
    decoder.layers.{i}.self_attention.linear_qkv.bias   (qkv_bias only; same packing)
    decoder.layers.{i}.self_attention.linear_proj.weight [H, heads * d]
    decoder.layers.{i}.pre_mlp_layernorm.weight   [H]
    decoder.layers.{i}.mlp.linear_fc1.weight      [2F, H] = [gate; up]
    decoder.layers.{i}.mlp.linear_fc2.weight      [H, F]
    decoder.final_layernorm.weight                [H]
    output_layer.weight                           [V, H]   (untied embeddings only)

Tensor parallelism splits QKV by whole KV groups and the vocabulary / fc1 / proj / fc2 by
contiguous blocks, except that each rank's fc1 shard is [gate_r; up_r] (so the full fc1 is
*not* the concatenation of the shards). With pipeline parallelism each stage (and each virtual
chunk) numbers its layers from 0; `TransformerLayer.layer_number` holds the global number.
"""

from __future__ import annotations

import re
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist

from .model import unwrap
from .parallel import ParallelState

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.*)$")
TIED_OUTPUT = "output_layer.weight"


def local_parameters(chunk: torch.nn.Module) -> List[Tuple[str, torch.nn.Parameter]]:
    """(global name, parameter) of one model chunk. The last stage's copy of a tied embedding
    is left out: the first stage's word embedding is the one parameter of record."""
    gpt = unwrap(chunk)
    numbers = [layer.layer_number - 1 for layer in gpt.decoder.layers] if hasattr(gpt, "decoder") else []
    tied = gpt.share_embeddings_and_output_weights
    out = []
    for name, param in gpt.named_parameters():
        m = _LAYER.match(name)
        if m:
            name = f"decoder.layers.{numbers[int(m.group(1))]}.{m.group(2)}"
        elif tied and name == TIED_OUTPUT:
            continue
        out.append((name, param))
    return out


def _is_swiglu_fc1(name: str) -> bool:
    return name.endswith("mlp.linear_fc1.weight") or name.endswith("mlp.linear_fc1.bias")


def _partition_dim(param: torch.Tensor) -> Optional[int]:
    if getattr(param, "tensor_model_parallel", False):
        return int(param.partition_dim)
    return None


def gather_tp(name: str, shard: torch.Tensor, param: torch.Tensor, tp_group) -> torch.Tensor:
    """The full tensor from every TP rank's `shard` (collective over `tp_group`)."""
    dim = _partition_dim(param)
    tp = dist.get_world_size(tp_group)
    if dim is None or tp == 1:
        return shard.clone()
    pieces = [torch.empty_like(shard) for _ in range(tp)]
    dist.all_gather(pieces, shard.contiguous(), group=tp_group)
    if _is_swiglu_fc1(name):
        gates, ups = zip(*(p.chunk(2, dim=dim) for p in pieces))
        return torch.cat(list(gates) + list(ups), dim=dim)
    return torch.cat(pieces, dim=dim)


def shard_tp(name: str, full: torch.Tensor, param: torch.Tensor, tp: int, tp_rank: int) -> torch.Tensor:
    """This TP rank's part of `full`, laid out like `param`."""
    dim = _partition_dim(param)
    if dim is None or tp == 1:
        return full
    if _is_swiglu_fc1(name):
        gate, up = full.chunk(2, dim=dim)
        return torch.cat([gate.chunk(tp, dim=dim)[tp_rank], up.chunk(tp, dim=dim)[tp_rank]], dim=dim)
    return full.chunk(tp, dim=dim)[tp_rank]


@torch.no_grad()
def load_full_state_dict(model: List[torch.nn.Module], full: Mapping[str, torch.Tensor], par: ParallelState) -> None:
    """Copy a full state dict (see the module docstring) into this rank's shards. Raises
    KeyError naming a missing parameter and ValueError on a shape mismatch."""
    for chunk in model:
        gpt = unwrap(chunk)
        for name, param in local_parameters(chunk):
            if name not in full:
                raise KeyError(f"full state dict has no {name!r}")
            part = shard_tp(name, full[name], param, par.tp, par.tp_rank)
            if tuple(part.shape) != tuple(param.shape):
                raise ValueError(f"{name}: shard shape {tuple(part.shape)} != parameter shape {tuple(param.shape)}")
            param.copy_(part)
        if gpt.share_embeddings_and_output_weights and gpt.post_process and not gpt.pre_process:
            weight = gpt.output_layer.weight
            weight.copy_(
                shard_tp(
                    "embedding.word_embeddings.weight",
                    full["embedding.word_embeddings.weight"],
                    weight,
                    par.tp,
                    par.tp_rank,
                )
            )


def _canonical_key(name: str) -> Tuple[int, int, str]:
    m = _LAYER.match(name)
    if name.startswith("embedding."):
        return (0, 0, name)
    if m:
        return (1, int(m.group(1)), m.group(2))
    if name.startswith("decoder."):
        return (2, 0, name)
    return (3, 0, name)


def _full_shape(param: torch.Tensor, tp: int) -> Tuple[int, ...]:
    shape = list(param.shape)
    dim = _partition_dim(param)
    if dim is not None:
        shape[dim] *= tp
    return tuple(shape)


@torch.no_grad()
def iter_full_tensors(
    model: List[torch.nn.Module], par: ParallelState, *, what: str = "param"
) -> Iterator[Tuple[str, torch.Tensor]]:
    """(global name, full tensor) for every parameter of the model, in canonical order
    (embedding, layers 0.., final norm, output layer), on **every** rank of the model-parallel
    group. Collective: all ranks of the TP and PP groups must iterate it to the end together.

    Tensors live on `par.device`. what="param": the weights in the model's dtype (bf16 on
    GPU by default). what="grad": `param.main_grad` (fp32) after a backward pass -- after
    an optimizer step that is the *clipped* gradient, and with the distributed optimizer over
    DP > 1 only this rank's slice of each buffer is reduced (use distributed_optimizer off).
    """
    if what not in ("param", "grad"):
        raise ValueError(f"what must be 'param' or 'grad', got {what!r}")
    local: Dict[str, torch.nn.Parameter] = {}
    for chunk in model:
        local.update(local_parameters(chunk))

    def source(p: torch.nn.Parameter) -> torch.Tensor:
        return p.detach() if what == "param" else p.main_grad.detach()

    # Every stage learns every name with its owner, full shape and dtype.
    mine = [(n, _full_shape(p, par.tp), source(p).dtype) for n, p in local.items()]
    stages: List[list] = [mine]
    if par.pp > 1:
        stages = [None] * par.pp
        dist.all_gather_object(stages, mine, group=par.pp_group)
    catalogue = sorted(
        ((entry, stage) for stage, entries in enumerate(stages) for entry in entries),
        key=lambda e: _canonical_key(e[0][0]),
    )
    for (name, shape, dtype), stage in catalogue:
        if stage == par.pp_rank:
            full = gather_tp(name, source(local[name]), local[name], par.tp_group)
        else:
            full = torch.empty(shape, dtype=dtype, device=par.device)
        if par.pp > 1:
            full = full.contiguous()
            dist.broadcast(full, src=dist.get_global_rank(par.pp_group, stage), group=par.pp_group)
        yield name, full
