"""Build the policy: a Megatron-core GPTModel with a Llama / Qwen2 architecture.

RMSNorm, SwiGLU MLP, RoPE (base `model.rotary_base`), grouped-query attention, optional QKV
bias, tied or untied embeddings, no other biases, no dropout (RL updates must be a
deterministic function of the batch). Transformer-engine layers when transformer-engine and
CUDA are present (or asked for), Megatron's local spec otherwise.

`build_model` returns the model chunks of this pipeline rank (one per virtual stage), each
wrapped in Megatron's DistributedDataParallel, which owns the contiguous grad buffers the
distributed optimizer shards. The bare GPTModel of a chunk is `unwrap(chunk)`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F

from ..config import Config
from .compat.finalize_grads import finalize_grads_without_token_division
from .parallel import ParallelState


def resolve_dtype(name: str) -> torch.dtype:
    """model.dtype: auto = bf16 with CUDA, fp32 without."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def transformer_engine_error() -> Optional[str]:
    """None when transformer-engine's torch part imports, else why not (one line).

    `import transformer_engine` alone proves nothing: its top-level __init__ swallows the
    ImportError of a broken torch extension, and Megatron then fails deep inside layer building.
    """
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any failure means the TE layers cannot be built
        return f"{type(e).__name__}: {e}".splitlines()[0][:200]
    return None


def use_transformer_engine(impl: str) -> bool:
    """model.transformer_impl: local | transformer_engine (an error without it) | auto."""
    if impl == "local":
        return False
    why = transformer_engine_error() or (None if torch.cuda.is_available() else "no CUDA")
    if impl == "transformer_engine" and why:
        raise ValueError(f"model.transformer_impl=transformer_engine: transformer-engine cannot be used here ({why})")
    return why is None


def fusion_settings(on_gpu: bool, te: bool) -> Dict[str, bool]:
    """Megatron's fused paths: on wherever their kernels exist, off on CPU (they are CUDA kernels).

    - bias-activation and bias-dropout-add fusions are torch-scripted CUDA code: GPU only;
    - RoPE fusion and gradient-accumulation fusion come with transformer-engine's layers (TE's
      fused RoPE also handles packed THD rows, where unfused RoPE calls .tolist() on the
      sequence lengths in every layer, a host sync; TE's linear layers accumulate weight
      gradients straight into Megatron's fp32 main_grad buffers);
    - the masked-softmax fusion is apex's kernel for the local spec's attention, which TE's
      attention does not use: off.
    """
    return dict(
        bias_activation_fusion=on_gpu,
        bias_dropout_fusion=on_gpu,
        apply_rope_fusion=on_gpu and te,
        gradient_accumulation_fusion=on_gpu and te,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
    )


def megatron_overrides(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """The config's free-form `megatron:` section, checked against TransformerConfig's fields."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    known = {f.name for f in dataclasses.fields(TransformerConfig)}
    for key in raw:
        if key not in known:
            raise ValueError(
                f"megatron.{key}: not a field of megatron.core TransformerConfig "
                f"(the megatron: section is passed to it verbatim)"
            )
    return dict(raw)


def transformer_config(cfg: Config, par: ParallelState):
    """TransformerConfig for `cfg` on this machine; `megatron:` entries override ours."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    m, p = cfg.model, cfg.parallel
    dtype = resolve_dtype(m.dtype)
    on_gpu = torch.cuda.is_available()
    fields = dict(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        kv_channels=m.kv_channels,
        qk_layernorm=m.qk_layernorm,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=m.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=p.tensor,
        pipeline_model_parallel_size=p.pipeline,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline,
        context_parallel_size=p.context,
        sequence_parallel=p.sequence_parallel,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        pipeline_dtype=dtype,
        use_cpu_initialization=not on_gpu,
        # Our loss is already normalised by global token counts (train/step.py): Megatron
        # must neither divide by the number of micro-batches nor average over DP ranks.
        calculate_per_token_loss=True,
        **fusion_settings(on_gpu, use_transformer_engine(m.transformer_impl)),
        # Over gloo, batched isend/irecv mismatches messages when a stage's previous and next
        # stage are the same rank (PP=2 with virtual stages): the activations of interleaved
        # micro-batches came out slightly wrong (tests/dist/test_train_layouts.py, pp2_vpp2).
        # Unbatched send/recv is exact; there is also no CUDA stream to synchronise.
        batch_p2p_comm=par.backend == "nccl",
        batch_p2p_sync=par.backend == "nccl",
    )
    fields.update(megatron_overrides(cfg.megatron))
    return TransformerConfig(**fields)


def layer_spec(cfg: Config):
    """Transformer-engine layers when available (their attention does context parallelism and
    packed THD sequences natively); Megatron's local spec otherwise, whose attention gets our
    all-gather context-parallel stand-in when parallel.context > 1 (train/cp_attention.py)."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if use_transformer_engine(cfg.model.transformer_impl):
        _log_spec_once("transformer-engine layer spec")
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=cfg.model.qk_layernorm)
    if torch.cuda.is_available():  # a GPU run on the slower local layers deserves a word
        _log_spec_once(f"local layer spec (transformer-engine: {transformer_engine_error() or 'not asked for'})")
    spec = get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=cfg.model.qk_layernorm)
    if cfg.parallel.context > 1:
        from .cp_attention import ContextParallelDotProductAttention

        spec = copy.deepcopy(spec)
        spec.submodules.self_attention.submodules.core_attention = ContextParallelDotProductAttention
    return spec


_LOGGED: set = set()


def _log_spec_once(what: str) -> None:
    if what not in _LOGGED and int(os.environ.get("RANK", "0")) == 0:
        _LOGGED.add(what)
        print(f"model: {what}", flush=True)


def build_gpt_chunks(cfg: Config, par: ParallelState, tcfg=None) -> List[torch.nn.Module]:
    """The bare GPTModel chunks of this pipeline rank (one per virtual stage), unwrapped."""
    from megatron.core import parallel_state as mpu
    from megatron.core.models.gpt import GPTModel

    m = cfg.model
    if m.vocab_size % par.tp:
        raise ValueError(
            f"model.vocab_size={m.vocab_size} must be divisible by parallel.tensor={par.tp} "
            "(we do not pad the vocabulary: padded logits would change the log-probs)"
        )
    tcfg = tcfg or transformer_config(cfg, par)
    spec = layer_spec(cfg)
    chunks = []
    for vp in range(par.num_model_chunks):
        vp_stage = vp if par.vpp else None
        model = GPTModel(
            config=tcfg,
            transformer_layer_spec=spec,
            vocab_size=m.vocab_size,
            max_sequence_length=m.max_seq_length,
            pre_process=mpu.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=mpu.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            parallel_output=True,
            share_embeddings_and_output_weights=m.tie_embeddings,
            position_embedding_type="rope",
            rotary_base=m.rotary_base,
            # llama3: megatron-core scales with low/high frequency factors 1/4 and an original
            # context of 8192 (hf/config.py refuses checkpoints with others); linear: positions / factor.
            rope_scaling=m.rope_scaling == "llama3",
            rope_scaling_factor=m.rope_scaling_factor,
            seq_len_interpolation_factor=m.rope_scaling_factor if m.rope_scaling == "linear" else None,
            pg_collection=par.pg,
            vp_stage=vp_stage,
        )
        if torch.cuda.is_available():
            model.cuda(torch.cuda.current_device())
        chunks.append(model)
    return chunks


def build_model(cfg: Config, par: ParallelState) -> List[torch.nn.Module]:
    """GPT chunks wrapped for training: Float16Module for bf16, then Megatron's DDP (grad
    buffers in fp32, the distributed optimizer's layout when parallel.distributed_optimizer).
    Data-parallel replicas start from rank 0 of each DP group's weights."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer.module import Float16Module

    tcfg = transformer_config(cfg, par)
    chunks = build_gpt_chunks(cfg, par, tcfg)
    if tcfg.bf16:
        chunks = [Float16Module(tcfg, c) for c in chunks]
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
    )
    wrapped = [
        DistributedDataParallel(
            config=tcfg,
            ddp_config=ddp_cfg,
            module=c,
            # Bucketing only matters when reduction overlaps the backward pass.
            disable_bucketing=i > 0,
            pg_collection=par.pg,
        )
        for i, c in enumerate(chunks)
    ]
    for w in wrapped:
        w.broadcast_params()

    tcfg.finalize_model_grads_func = finalize_grads_without_token_division
    if len(wrapped) > 1:
        tcfg.no_sync_func = [w.no_sync for w in wrapped]
    else:
        tcfg.no_sync_func = wrapped[0].no_sync
    return wrapped


def forward_kwargs(chunk: torch.nn.Module) -> Dict[str, Any]:
    """Keyword arguments for calling a chunk built here. A bf16 chunk (Float16Module) returns
    its logits in bf16: by default Float16Module casts them to fp32, an extra N x V copy (4
    bytes per logit, kept alive through the backward, plus the cast's bf16 gradient) that the
    log-prob kernel does not need -- it reads bf16 and computes in fp32 internally."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.module import Float16Module

    while not isinstance(chunk, GPTModel):
        if isinstance(chunk, Float16Module):
            return {"fp32_output": False}
        chunk = chunk.module
    return {}


def unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    from megatron.core.models.gpt import GPTModel

    while not isinstance(chunk, GPTModel):
        chunk = chunk.module
    return chunk
