"""Config -> Megatron TransformerConfig, tensor-parallel weight layouts, and the engine's guards
(no process group needed for any of these)."""

import sys

import pytest
import torch
import torch.nn.functional as F

from chord_megatron.config import load_config
from chord_megatron.train.parallel import ParallelState

BASE = ["data.max_prompt_tokens=8", "data.max_response_tokens=8", "rollout.max_new_tokens=8", "model.max_seq_length=32"]


def cfg(*overrides):
    return load_config(None, BASE + list(overrides))


def fake_par(tp=1, pp=1, backend="gloo"):
    return ParallelState(
        world_size=tp * pp,
        rank=0,
        tp=tp,
        pp=pp,
        vpp=None,
        cp=1,
        dp=1,
        tp_rank=0,
        pp_rank=0,
        cp_rank=0,
        dp_rank=0,
        backend=backend,
        device=torch.device("cpu"),
        pg=None,
    )


def test_llama_qwen_architecture_fields():
    from chord_megatron.train.model import transformer_config

    c = cfg("model.qkv_bias=true", "model.norm_eps=1e-5", "parallel.tensor=2")
    t = transformer_config(c, fake_par(tp=2))
    assert t.normalization == "RMSNorm" and t.layernorm_epsilon == 1e-5
    assert t.gated_linear_unit and t.activation_func is F.silu and not t.add_bias_linear and t.add_qkv_bias
    assert (t.num_attention_heads, t.num_query_groups, t.kv_channels) == (4, 2, 16)
    assert t.hidden_dropout == 0.0 and t.attention_dropout == 0.0
    assert t.calculate_per_token_loss  # the step's loss is globally normalised (train/step.py)
    assert t.params_dtype == torch.float32 and not t.bf16  # dtype auto on a CPU machine
    assert t.use_cpu_initialization and not t.batch_p2p_comm and t.tensor_model_parallel_size == 2


def test_megatron_section_passes_through_and_rejects_unknown_keys():
    from chord_megatron.train.model import transformer_config

    t = transformer_config(cfg("megatron.init_method_std=0.01", "megatron.recompute_granularity=selective"), fake_par())
    assert t.init_method_std == 0.01 and t.recompute_granularity == "selective"
    with pytest.raises(ValueError, match=r"megatron\.init_std: not a field of megatron.core TransformerConfig"):
        transformer_config(cfg("megatron.init_std=0.01"), fake_par())


def test_dtype_and_layer_spec_choice():
    from chord_megatron.train.model import resolve_dtype, use_transformer_engine

    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype("fp32") == torch.float32
    assert resolve_dtype("auto") == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    assert use_transformer_engine("local") is False
    if not torch.cuda.is_available():
        assert use_transformer_engine("auto") is False
        with pytest.raises(ValueError, match="transformer-engine cannot be used here"):
            use_transformer_engine("transformer_engine")


def test_a_transformer_engine_whose_torch_part_is_broken_is_not_used(tmp_path, monkeypatch):
    """transformer_engine's top-level import swallows its torch extension's ImportError; the
    detection imports the torch part, so a broken install is named instead of failing deep in
    Megatron's layer building."""
    from chord_megatron.train import model

    pkg = tmp_path / "transformer_engine"
    (pkg / "pytorch").mkdir(parents=True)
    (pkg / "__init__.py").write_text("try:\n    from . import pytorch\nexcept ImportError:\n    pass\n")
    (pkg / "pytorch" / "__init__.py").write_text("raise ImportError('libtransformer_engine.so: undefined symbol')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("transformer_engine")]:
        monkeypatch.delitem(sys.modules, name)
    import transformer_engine  # noqa: F401 - the top level imports fine, as in the wild

    assert "undefined symbol" in model.transformer_engine_error()
    monkeypatch.setattr(model.torch.cuda, "is_available", lambda: True)  # even with CUDA
    assert model.use_transformer_engine("auto") is False
    with pytest.raises(ValueError, match="model.transformer_impl=transformer_engine: .*undefined symbol"):
        model.use_transformer_engine("transformer_engine")


def test_fused_paths_are_on_where_their_kernels_exist():
    from chord_megatron.train.model import fusion_settings, transformer_config

    cpu = fusion_settings(on_gpu=False, te=False)
    assert not any(cpu.values()), cpu
    gpu_te = fusion_settings(on_gpu=True, te=True)
    for key in ("bias_activation_fusion", "bias_dropout_fusion", "apply_rope_fusion", "gradient_accumulation_fusion"):
        assert gpu_te[key], key
    gpu_local = fusion_settings(on_gpu=True, te=False)
    assert gpu_local["bias_dropout_fusion"] and not gpu_local["apply_rope_fusion"]
    assert not gpu_local["gradient_accumulation_fusion"]  # the local linear layers would need apex
    t = transformer_config(cfg(), fake_par())  # this machine: CPU
    assert not (t.apply_rope_fusion or t.gradient_accumulation_fusion or t.bias_dropout_fusion)


def _param(shape, dim):
    p = torch.nn.Parameter(torch.zeros(shape))
    p.tensor_model_parallel, p.partition_dim = True, dim
    return p


def test_tensor_parallel_shards_follow_megatron_layouts():
    from chord_megatron.train.weights import shard_tp

    full = torch.arange(8 * 3).view(8, 3)
    # fc1 = [gate; up]; rank r holds [gate_r; up_r]
    fc1 = "decoder.layers.0.mlp.linear_fc1.weight"
    assert torch.equal(shard_tp(fc1, full, _param((4, 3), 0), 2, 1), torch.cat([full[2:4], full[6:8]]))
    # QKV and vocabulary: contiguous blocks (QKV is packed per KV group, so blocks are whole groups)
    qkv = "decoder.layers.0.self_attention.linear_qkv.weight"
    assert torch.equal(shard_tp(qkv, full, _param((4, 3), 0), 2, 1), full[4:])
    # row-parallel: split along the input dimension
    proj = torch.arange(3 * 8).view(3, 8)
    assert torch.equal(shard_tp("x.linear_proj.weight", proj, _param((3, 4), 1), 2, 0), proj[:, :4])
    # replicated parameters (norms) are whole on every rank
    norm = torch.ones(3)
    assert shard_tp("x.input_layernorm.weight", norm, torch.nn.Parameter(norm), 2, 1) is norm


def test_engine_refuses_packing_with_context_parallelism_on_transformer_engine(monkeypatch):
    """TE's context parallelism needs packed rows split per sequence (THD); not implemented."""
    from chord_megatron.train import engine

    monkeypatch.setattr(engine, "use_transformer_engine", lambda impl: True)  # as on a GPU node with TE
    with pytest.raises(NotImplementedError, match="train.pack_sequences with parallel.context > 1"):
        engine.MegatronEngine(cfg("train.pack_sequences=true", "parallel.context=2"))
    assert engine._check_layout(cfg("train.pack_sequences=true")) is True  # packed rows go as THD
    assert engine._check_layout(cfg("parallel.context=2")) is False
