"""An estimate of one trainer GPU's peak memory for a config and a parallel layout.

Used by `chord launch plan` to refuse layouts that cannot fit before a job starts. Simple on
purpose (see `estimate_memory`): it catches what cannot fit, it does not predict the allocator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict

from ...data.batch import mixed_step_rows
from .layout import ParallelLayout

GIB = 2**30
# What torch reports as total memory for an H100 80GB (SXM5 / PCIe): 81559 MiB.
H100_MEMORY_GIB = 79.6
# Per-GPU memory the estimate adds for the CUDA context, NCCL buffers and allocator slack.
OVERHEAD_GIB = 3.0


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU training memory in bytes, by term (see `estimate_memory`). An estimate."""

    params_total: int  # whole model
    params_per_gpu: int  # largest pipeline stage / TP
    weights: float
    grads: float
    optimizer: float
    activations: float
    logits: float
    overhead: float
    budget: float  # what training may use on one GPU
    sglang_weights: float  # per GPU of an SGLang server (0 without servers)

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.logits + self.overhead


def count_params(model) -> Dict[str, int]:
    """Parameters of a Llama/Qwen2-style decoder: per layer, embedding, output layer, final norm."""
    h, f, L, V = model.hidden_size, model.ffn_hidden_size, model.num_layers, model.vocab_size
    d = model.kv_channels
    q, kv = model.num_attention_heads * d, model.num_query_groups * d
    attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if model.qkv_bias else 0)
    if getattr(model, "qk_layernorm", False):
        attn += 2 * d  # Qwen3's per-head RMSNorm of queries and keys
    mlp = 3 * h * f  # SwiGLU: gate, up, down
    layer = attn + mlp + 2 * h  # two RMSNorms
    embed = V * h
    output = 0 if model.tie_embeddings else V * h
    return {
        "layer": layer,
        "layers": L * layer,
        "embedding": embed,
        "output": output,
        "final_norm": h,
        "total": L * layer + embed + output + h,
    }


def largest_stage_params(model, pp: int) -> int:
    """Parameters of the largest pipeline stage: its layers plus the embedding (first stage) or
    the output layer and final norm (last stage). With tied embeddings and PP > 1 the last stage
    keeps its own copy of the embedding matrix, as Megatron does."""
    c = count_params(model)
    layers = c["layers"] // pp
    if pp == 1:
        return c["total"]
    first = layers + c["embedding"]
    last = layers + (c["output"] or c["embedding"]) + c["final_norm"]
    return max(first, last)


def step_rows(cfg) -> int:
    """The fewest rows a training step can have (a pure-RL or a pure-SFT step):
    prompts_per_step x samples_per_prompt. Steps that add expert rows only have more."""
    return cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt


def estimate_memory(
    cfg,
    layout: ParallelLayout,
    *,
    gpu_memory_gib: float = H100_MEMORY_GIB,
    colocated_sglang: bool = False,
    sglang_gpus: int = 1,
) -> MemoryEstimate:
    """An ESTIMATE of one trainer GPU's peak memory, in bytes. Simple on purpose; it catches
    layouts that cannot fit, it does not predict the allocator's peak.

    P = parameters of the largest pipeline stage / TP (`largest_stage_params`).
      weights     P x 2 (bf16; 4 when model.dtype=fp32)
      grads       P x 4 (Megatron's fp32 main-grad buffer: grad_reduce_in_fp32=True here)
      optimizer   P x 12 / S: fp32 master weights 4 + Adam m, v 8 (bf16); P x 8 / S (fp32 model,
                  no master copy). S = DP x CP with parallel.distributed_optimizer, else 1.
      activations t x h x (10 + 24 / TP) bytes per layer and micro-batch (34 / TP with sequence
                  parallelism): Korthikanti et al. 2022 for bf16 without recomputation, the
                  attention-score term dropped (flash attention). t = micro-batch tokens / CP =
                  train.micro_batch_size x S_max / CP, S_max = min(data.max_prompt_tokens +
                  max(rollout.max_new_tokens, data.max_response_tokens), model.max_seq_length),
                  or train.pack_length when packing sets one. The first pipeline stage holds
                  min(PP, micro-batches) micro-batches of its L / PP layers (1F1B). megatron.recompute_granularity=full keeps only each
                  layer's input (t x h x 2) plus one layer's full activations.
      logits      t x V / TP x 2 (the bf16 logits; the model hands them to the log-prob kernel
                  in bf16, whose backward writes the gradient into them): 4 for an fp32 model
      overhead    3 GiB (CUDA context, NCCL buffers, allocator slack)
    Budget: the GPU's memory (H100: 79.6 GiB), less sglang.mem_fraction_static of it when SGLang
    servers share the GPU (colocated). SGLang's own need is checked separately: its weights,
    2 bytes per parameter / (sglang TP), must fit in the GPU.
    """
    m, p = cfg.model, cfg.parallel
    bf16 = m.dtype != "fp32"  # auto = bf16 on the GPUs this plan is for
    per_gpu = largest_stage_params(m, layout.pp) / layout.tp
    shard = layout.dp * layout.cp if p.distributed_optimizer else 1
    weights = per_gpu * (2 if bf16 else 4)
    grads = per_gpu * 4
    optimizer = per_gpu * (12 if bf16 else 8) / shard

    seq = min(
        cfg.data.max_prompt_tokens + max(cfg.rollout.max_new_tokens, cfg.data.max_response_tokens), m.max_seq_length
    )
    if cfg.train.pack_sequences and cfg.train.pack_length:
        seq = cfg.train.pack_length  # packed model rows: micro_batch_size of them, this long
    tokens = cfg.train.micro_batch_size * seq / layout.cp
    per_layer = tokens * m.hidden_size * ((34 / layout.tp) if p.sequence_parallel else (10 + 24 / layout.tp))
    rows_per_rank = math.ceil(sum(mixed_step_rows(cfg)) / layout.dp)
    micro_batches = max(1, math.ceil(rows_per_rank / cfg.train.micro_batch_size))
    layers_in_flight = (m.num_layers // layout.pp) * min(layout.pp, micro_batches)
    if str(cfg.megatron.get("recompute_granularity", "")).lower() == "full":
        activations = layers_in_flight * tokens * m.hidden_size * 2 + per_layer
    else:
        activations = layers_in_flight * per_layer
    logits = tokens * m.vocab_size / layout.tp * (2 if bf16 else 4)

    total = gpu_memory_gib * GIB
    budget = total
    if colocated_sglang:
        budget = total * (1.0 - float(cfg.sglang.get("mem_fraction_static", 0.0) or 0.0))
    sglang_weights = count_params(m)["total"] * 2 / sglang_gpus if sglang_gpus else 0.0
    return MemoryEstimate(
        params_total=count_params(m)["total"],
        params_per_gpu=int(per_gpu),
        weights=weights,
        grads=grads,
        optimizer=optimizer,
        activations=activations,
        logits=logits,
        overhead=OVERHEAD_GIB * GIB,
        budget=budget,
        sglang_weights=sglang_weights,
    )
