"""chord_megatron.hf reads the config.json of each supported family the way transformers does
(the tiny random checkpoints are tests/support/hf_models.py)."""

import json

import pytest

from tests.support.hf_models import FAMILIES, VOCAB, make_checkpoint


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_model_config_from_hf_reads_config_json(tmp_path, family):
    from chord_megatron.hf.config import model_config_from_hf

    folder, model = make_checkpoint(tmp_path / family, family, tokenizer=False)
    m = model_config_from_hf(folder)
    hf = model.config
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.vocab_size) == (
        2,
        hf.hidden_size,
        hf.intermediate_size,
        VOCAB,
    )
    assert (m.num_attention_heads, m.num_query_groups) == (4, 2)
    assert m.rotary_base == hf.rope_parameters["rope_theta"] and m.norm_eps == hf.rms_norm_eps
    assert m.tie_embeddings == hf.tie_word_embeddings and m.hf_path == str(folder)
    assert m.qkv_bias == (family == "qwen2") and m.qk_layernorm == (family == "qwen3")
    assert m.head_dim == (16 if family == "qwen3" else None)
    assert (m.rope_scaling, m.rope_scaling_factor) == (("llama3", 8.0) if family == "llama" else ("none", 8.0))


def test_legacy_config_json_keys_are_read(tmp_path):
    """Checkpoints saved by transformers 4 carry rope_theta / rope_scaling at the top level."""
    from chord_megatron.hf.config import model_config_from_hf

    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_attention_heads": 24,
        "num_hidden_layers": 28,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "hidden_act": "silu",
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = model_config_from_hf(tmp_path)
    assert (m.rotary_base, m.norm_eps, m.tie_embeddings, m.rope_scaling, m.rope_scaling_factor) == (
        500000.0,
        1e-5,
        True,
        "llama3",
        32.0,
    )
    assert m.head_dim is None  # 3072 / 24 = 128: nothing to record


@pytest.mark.parametrize(
    "change,match",
    [
        ({"model_type": "mistral"}, "model_type 'mistral' is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"attention_bias": True}, "attention_bias=true"),
        ({"mlp_bias": True}, "mlp_bias=true"),
        (
            {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}},
            "rope_scaling type 'yarn' is not supported",
        ),
        (
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 2.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                }
            },
            "low_freq_factor=2.0",
        ),
    ],
)
def test_unsupported_checkpoints_are_refused_naming_the_key(tmp_path, change, match):
    from chord_megatron.hf.config import HFCheckpointError, model_config_from_hf

    cfg = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 80,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": 96,
        "max_position_embeddings": 128,
        "hidden_act": "silu",
    }
    cfg.update(change)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HFCheckpointError, match=match):
        model_config_from_hf(tmp_path)
