"""An estimate of the peak memory of GPU 0 -- trainer rank 0, and on colocated runs SGLang server
0 too -- for a config and a parallel layout, term by term, each with the assumption behind it.

Used by `chord launch plan` to refuse layouts that cannot fit before a job starts, and printed
there (memory_table.py). Simple on purpose (see `estimate_memory`): it catches what cannot fit,
it does not predict the allocator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Tuple

from ...data.batch import mixed_step_rows
from ...train.batching import micro_batch_rows
from .layout import ParallelLayout
from .sglang_memory import sglang_dynamic, sglang_static

GIB = 2**30
MIB = 2**20
# What torch reports as total memory for an H100 80GB (SXM5 / PCIe): 81559 MiB.
H100_MEMORY_GIB = 79.6
# Per-GPU memory the estimate adds for the CUDA context, NCCL buffers and allocator slack.
OVERHEAD_GIB = 3.0
# fp32 values per token the fused log-prob kernel allocates besides the logits: [4, t] shard
# partials, [4, t] combined sums, ~6 per-token results and maxima, [5, t] backward stats.
KERNEL_FLOATS_PER_TOKEN = 20
CHUNK_ROWS = 32  # chord_kernels.chunked.DEFAULT_CHUNK_ROWS: rows of the chunked path's work buffers


@dataclass(frozen=True)
class Term:
    name: str
    bytes: float
    assumption: str


@dataclass(frozen=True)
class Phase:
    name: str
    bytes: float
    resident: str  # which terms are on the GPU at once


@dataclass(frozen=True)
class MemoryEstimate:
    """GPU 0's memory by term and by phase of a step, in bytes. An estimate (`estimate_memory`)."""

    params_total: int  # whole model
    params_per_gpu: int  # largest pipeline stage / TP
    gpu: float  # the GPU's memory
    terms: Tuple[Term, ...]
    phases: Tuple[Phase, ...]
    sglang_weights: float  # per GPU of an SGLang server (0 without servers)

    def term(self, name: str) -> float:
        return next((t.bytes for t in self.terms if t.name == name), 0.0)

    @property
    def weights(self) -> float:
        return self.term("weights")

    @property
    def grads(self) -> float:
        return self.term("grads")

    @property
    def optimizer(self) -> float:
        return self.term("optimizer")

    @property
    def activations(self) -> float:
        return self.term("activations")

    @property
    def logits(self) -> float:
        return self.term("logits")

    @property
    def overhead(self) -> float:
        return self.term("overhead")

    @property
    def training(self) -> float:
        """The trainer's own peak: its persistent state plus one train step's transient memory."""
        return sum(self.term(n) for n in PERSISTENT + TRANSIENT)

    @property
    def peak(self) -> Phase:
        return max(self.phases, key=lambda p: p.bytes)

    @property
    def total(self) -> float:
        """GPU 0's peak over the phases of a step."""
        return self.peak.bytes

    @property
    def budget(self) -> float:
        return self.gpu

    @property
    def margin(self) -> float:
        return self.gpu - self.total


PERSISTENT = ("weights", "grads", "optimizer", "overhead")
TRANSIENT = ("activations", "logits", "log-prob kernel")


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
    """An ESTIMATE of GPU 0's peak memory, in bytes: trainer rank 0, plus SGLang server 0 when
    `colocated_sglang`. Simple on purpose; it catches layouts that cannot fit, it does not
    predict the allocator. Every term carries its assumption (printed by `chord launch plan`).

    P = parameters of the largest pipeline stage / TP (`largest_stage_params`).
    The trainer's persistent state
      weights     P x 2 (bf16; 4 when model.dtype=fp32)
      grads       P x 4 (Megatron's fp32 main-grad buffer: grad_reduce_in_fp32=True; full size
                  also with the distributed optimizer, which reduce-scatters inside it)
      optimizer   P x 12 / S: fp32 master weights 4 + Adam m, v 8 (bf16); P x 8 / S (fp32 model,
                  no master copy). S = DP x CP with parallel.distributed_optimizer, else 1.
      overhead    3 GiB (CUDA context, NCCL buffers, allocator slack)
    A train step's transient memory, with t = tokens of one micro-batch on this rank
      = rows of one micro-batch x their length / CP: as many rows as the engine puts in one
      (train/batching.py: the fewest micro-batches of at most train.micro_batch_size rows, evenly
      filled), and train.micro_batch_size when packed (an upper bound). Packed (train.pack_sequences) a
      model row is train.pack_length tokens (0: the batch's longest row); otherwise every row is
      padded to the step's longest. Either way at most S_max = min(data.max_prompt_tokens +
      max(rollout.max_new_tokens, data.max_response_tokens), model.max_seq_length).
      activations t x h x (10 + 24 / TP) bytes per layer and micro-batch, t x h x 34 / TP with
                  sequence parallelism (Korthikanti et al. 2022, bf16, no recomputation, the
                  attention-score term dropped: flash attention). The first pipeline stage holds
                  min(PP, micro-batches) micro-batches of its L / PP layers (1F1B).
                  megatron.recompute_granularity=full keeps each layer's input (t x h x 2, / TP
                  with sequence parallelism) plus one layer's full activations.
      logits      t x V / TP x 2: the bf16 logits go into the log-prob kernel as they are (no fp32
                  copy), whose backward writes the gradient into them; 4 for an fp32 model
      log-prob kernel  train.log_prob_impl auto/triton: KERNEL_FLOATS_PER_TOKEN fp32 per token;
                  chunked: two fp32 [32, V / TP] work buffers more; reference: two fp32 t x V / TP
    Rank 0 during a weight sync
      weight sync 2 buckets in flight (one of look-ahead) x max(rollout.sync_bucket_mb, the largest
                  full tensor: V x h or ffn x h, bf16)
    SGLang server 0 on the same GPU (colocated): sglang_memory.py's static and dynamic parts.

    Phases of a step (the peak is the largest):
      no SGLang here   train = persistent + transient; sync = persistent + max(transient, sync)
                       (the sync's buckets reuse the trainer's cached blocks)
      colocated        every phase holds persistent + max(transient, sync) + SGLang static + dynamic
                       (the trainer's cache keeps its step's peak, SGLang its pool)
      colocated, rollout.release_sglang_memory (memory_handover.py)
                       generate = persistent + SGLang static + dynamic (the trainer emptied its cache);
                       train = persistent + transient + SGLang dynamic (+ SGLang's weights when
                       rollout.sync_every > 1: only steps followed by a sync release them);
                       sync = persistent + sync + SGLang weights + dynamic (the KV cache returns
                       at the next generate)
    """
    m, p, r = cfg.model, cfg.parallel, cfg.rollout
    bf16 = m.dtype != "fp32"  # auto = bf16 on the GPUs this plan is for
    pbytes = 2 if bf16 else 4
    counts = count_params(m)
    per_gpu = largest_stage_params(m, layout.pp) / layout.tp
    shard = layout.dp * layout.cp if p.distributed_optimizer else 1
    gpu = gpu_memory_gib * GIB
    terms = [
        Term(
            "weights",
            per_gpu * pbytes,
            f"{_count(per_gpu)} params (largest pipeline stage / TP {layout.tp}) x {pbytes} bytes ({'bf16' if bf16 else 'fp32'})",
        ),
        Term("grads", per_gpu * 4, "fp32 main-grad buffer, 4 bytes per param (full size: grad_reduce_in_fp32)"),
        Term(
            "optimizer",
            per_gpu * (12 if bf16 else 8) / shard,
            (
                f"fp32 master + Adam m, v: {12 if bf16 else 8} bytes per param / {shard} "
                + (
                    f"(distributed optimizer over DP {layout.dp} x CP {layout.cp})"
                    if p.distributed_optimizer
                    else "(parallel.distributed_optimizer off: not sharded)"
                )
            ),
        ),
        Term("overhead", OVERHEAD_GIB * GIB, "CUDA context, NCCL buffers, allocator slack"),
    ]

    s_max = min(cfg.data.max_prompt_tokens + max(r.max_new_tokens, cfg.data.max_response_tokens), m.max_seq_length)
    packed = cfg.train.pack_sequences
    row = cfg.train.pack_length if packed and cfg.train.pack_length else s_max
    step_rows_total = sum(mixed_step_rows(cfg))
    rows_per_rank = math.ceil(step_rows_total / layout.dp)
    # Unpacked, a micro-batch holds the rows the engine gives it (as few micro-batches as fit,
    # evenly filled: train/batching.py); packed rows' count depends on the lengths, so the
    # estimate takes micro_batch_size of them (an upper bound).
    mb_rows = (
        cfg.train.micro_batch_size
        if packed
        else micro_batch_rows(step_rows_total, layout.dp, cfg.train.micro_batch_size)
    )
    tokens = mb_rows * row / layout.cp
    sp = p.sequence_parallel
    h = m.hidden_size
    per_layer = tokens * h * ((34 / layout.tp) if sp else (10 + 24 / layout.tp))
    micro_batches = max(1, math.ceil(rows_per_rank / mb_rows))
    in_flight = min(layout.pp, micro_batches)
    layers = (m.num_layers // layout.pp) * in_flight
    where = f"{mb_rows} packed row(s) of {row}" if packed else f"{mb_rows} row(s) padded to {row}"
    t_text = f"t = {where} tokens / CP {layout.cp} = {tokens:.0f}"
    sp_text = f"sequence parallel: / TP {layout.tp}" if sp else "no sequence parallelism"
    if str(cfg.megatron.get("recompute_granularity", "")).lower() == "full":
        inputs = layers * tokens * h * 2 / (layout.tp if sp else 1)
        activations = inputs + per_layer
        act_text = f"full recompute: {layers} layer inputs t x h x 2 ({sp_text}) + one layer's; {t_text}"
    else:
        activations = layers * per_layer
        act_text = f"{layers} layers x t x h x {'34 / TP' if sp else '(10 + 24 / TP)'} ({sp_text}); {t_text}"
    v_local = m.vocab_size / layout.tp
    logits = tokens * v_local * pbytes
    impl = cfg.train.log_prob_impl
    kernel = tokens * KERNEL_FLOATS_PER_TOKEN * 4
    kernel_text = f"fused kernel: {KERNEL_FLOATS_PER_TOKEN} fp32 per token (partials, stats); gradient in place"
    if impl == "chunked":
        kernel += 2 * min(CHUNK_ROWS, tokens) * v_local * 4
        kernel_text = (
            f"chunked path: two fp32 [{CHUNK_ROWS}, V / TP] work buffers + {KERNEL_FLOATS_PER_TOKEN} fp32 per token"
        )
    elif impl == "reference":
        kernel += 2 * tokens * v_local * 4
        kernel_text = "reference path: fp32 log-softmax of t x V / TP and its gradient"
    fp32_copy = f"no fp32 copy, which would add {tokens * v_local * 4 / GIB:.1f} GiB" if bf16 else "fp32 model"
    kernel_text += f" = {kernel / MIB:.1f} MiB"
    terms += [
        Term("activations", activations, act_text),
        Term("logits", logits, f"t x V / TP {v_local:.0f} x {pbytes} bytes into the kernel ({fp32_copy})"),
        Term("log-prob kernel", kernel, kernel_text),
    ]
    largest = max(m.vocab_size, m.ffn_hidden_size) * h * pbytes
    bucket = r.sync_bucket_mb * MIB
    sync = 2 * max(bucket, largest)
    terms.append(
        Term(
            "weight sync",
            sync,
            f"rank 0: 2 buckets in flight x max(rollout.sync_bucket_mb {r.sync_bucket_mb} MiB, largest tensor {largest / GIB:.2f} GiB)",
        )
    )
    persistent = sum(t.bytes for t in terms if t.name in PERSISTENT)
    transient = sum(t.bytes for t in terms if t.name in TRANSIENT)
    sglang_weights = counts["total"] * 2 / sglang_gpus if sglang_gpus else 0.0

    if not colocated_sglang:
        phases = [
            Phase("train", persistent + transient, "trainer persistent + transient"),
            Phase("sync", persistent + max(transient, sync), "trainer persistent + max(transient, weight sync)"),
        ]
    else:
        static, static_text = sglang_static(cfg.sglang, gpu)
        dynamic, dynamic_text = sglang_dynamic(cfg.sglang, gpu)
        terms += [Term("SGLang static", static, static_text), Term("SGLang dynamic", dynamic, dynamic_text)]
        if not r.release_sglang_memory:
            both = persistent + max(transient, sync) + static + dynamic
            what = "trainer persistent + max(transient, weight sync) (kept in its cache) + SGLang static + dynamic"
            phases = [Phase(name, both, what) for name in ("generate", "train", "sync")]
        else:
            keeps = sglang_weights if r.sync_every > 1 else 0.0
            terms.append(
                Term(
                    "SGLang weights",
                    sglang_weights,
                    f"2 bytes per param / {sglang_gpus} GPU(s) per server; released for a train step when a sync follows",
                )
            )
            phases = [
                Phase(
                    "generate",
                    persistent + static + dynamic,
                    "trainer persistent (cache emptied) + SGLang static + dynamic",
                ),
                Phase(
                    "train",
                    persistent + transient + dynamic + keeps,
                    "trainer persistent + transient + SGLang dynamic (KV cache"
                    + (" released; weights kept: rollout.sync_every > 1)" if keeps else " and weights released)"),
                ),
                Phase(
                    "sync",
                    persistent + sync + sglang_weights + dynamic,
                    "trainer persistent + weight sync + SGLang weights + dynamic",
                ),
            ]
    return MemoryEstimate(
        params_total=counts["total"],
        params_per_gpu=int(per_gpu),
        gpu=gpu,
        terms=tuple(terms),
        phases=tuple(phases),
        sglang_weights=sglang_weights,
    )


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"
