"""Tiny random Hugging Face checkpoints of each supported family, made on the spot (no hub), and
checks that chord_megatron.hf_io reads their config.json the way transformers does.

The builders here are shared with tests/unit/test_hf_io.py and tests/dist/test_hf_parallel.py:

    make_checkpoint(folder, "qwen2" | "qwen3" | "llama", shards=False) -> (folder, hf_config)

qwen2: GQA, QKV bias, tied embeddings, a rope theta no default has;
qwen3: q/k RMSNorm, head_dim != hidden / heads, untied;
llama: Llama-3.2-style llama3 rope scaling (factor 8, low/high 1/4, original context 8192), untied.
Every parameter is drawn at random (biases and norm gains too, which transformers initialises
to 0 and 1), so a tensor in the wrong place changes the logits.
"""
import json
from pathlib import Path

import pytest
import torch

VOCAB = 96
FAMILIES = ("qwen2", "qwen3", "llama")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def hf_config(family: str):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    if family == "qwen2":
        return Qwen2Config(hidden_size=32, intermediate_size=48, rms_norm_eps=1e-6, tie_word_embeddings=True,
                           rope_parameters={"rope_type": "default", "rope_theta": 12345.0}, **common)  # fmt: skip
    if family == "qwen3":
        return Qwen3Config(hidden_size=32, intermediate_size=40, head_dim=16, rms_norm_eps=1e-5,
                           tie_word_embeddings=False, attention_bias=False,
                           rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, **common)  # fmt: skip
    if family == "llama_linear":  # linear position interpolation (megatron's seq_len_interpolation_factor)
        return LlamaConfig(hidden_size=64, intermediate_size=80, rms_norm_eps=1e-5, tie_word_embeddings=False,
                           rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}, **common)
    if family == "llama":
        rope = {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
        return LlamaConfig(hidden_size=64, intermediate_size=80, rms_norm_eps=1e-5, tie_word_embeddings=False,
                           attention_bias=False, mlp_bias=False, rope_parameters=rope, **common)  # fmt: skip
    raise ValueError(family)


def random_model(family: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    cfg = hf_config(family)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
    return model.eval()


def make_tokenizer(folder: Path):
    """A word-level tokenizer with a chat template, saved in HF format (offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    words = [str(i) for i in range(20)] + list("abcdefghijklmnopqrstuvwxyz") + [
        "what", "is", "the", "answer", "boxed", "+", "=", "?", ".", "{", "}", "\\", "think", "<", ">", "/"]
    vocab = {t: i for i, t in enumerate(specials + words)}
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=False)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="?", additional_special_tokens=specials[3:])  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(folder))
    return fast


def make_checkpoint(folder, family: str, *, shards: bool = False, seed: int = 0, tokenizer: bool = True):
    """Save a random tiny `family` model (safetensors; sharded with an index when `shards`)."""
    folder = Path(folder)
    model = random_model(family, seed)
    model.save_pretrained(str(folder), max_shard_size="40KB" if shards else "100MB")
    if tokenizer:
        make_tokenizer(folder)
    return folder, model


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_model_config_from_hf_reads_config_json(tmp_path, family):
    from chord_megatron.hf_io import model_config_from_hf

    folder, model = make_checkpoint(tmp_path / family, family, tokenizer=False)
    m = model_config_from_hf(folder)
    hf = model.config
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.vocab_size) == (2, hf.hidden_size, hf.intermediate_size, VOCAB)
    assert (m.num_attention_heads, m.num_query_groups) == (4, 2)
    assert m.rotary_base == hf.rope_parameters["rope_theta"] and m.norm_eps == hf.rms_norm_eps
    assert m.tie_embeddings == hf.tie_word_embeddings and m.hf_path == str(folder)
    assert m.qkv_bias == (family == "qwen2") and m.qk_layernorm == (family == "qwen3")
    assert m.head_dim == (16 if family == "qwen3" else None)
    assert (m.rope_scaling, m.rope_scaling_factor) == (("llama3", 8.0) if family == "llama" else ("none", 8.0))


def test_legacy_config_json_keys_are_read(tmp_path):
    """Checkpoints saved by transformers 4 carry rope_theta / rope_scaling at the top level."""
    from chord_megatron.hf_io import model_config_from_hf

    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 3072, "intermediate_size": 8192,
           "num_attention_heads": 24, "num_hidden_layers": 28, "num_key_value_heads": 8, "head_dim": 128,
           "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": True, "vocab_size": 128256,
           "max_position_embeddings": 131072, "hidden_act": "silu",
           "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                            "original_max_position_embeddings": 8192, "rope_type": "llama3"}}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = model_config_from_hf(tmp_path)
    assert (m.rotary_base, m.norm_eps, m.tie_embeddings, m.rope_scaling, m.rope_scaling_factor) == (
        500000.0, 1e-5, True, "llama3", 32.0)
    assert m.head_dim is None  # 3072 / 24 = 128: nothing to record


@pytest.mark.parametrize("change,match", [
    ({"model_type": "mistral"}, "model_type 'mistral' is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"mlp_bias": True}, "mlp_bias=true"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}},
     "rope_scaling type 'yarn' is not supported"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192}}, "low_freq_factor=2.0"),
])  # fmt: skip
def test_unsupported_checkpoints_are_refused_naming_the_key(tmp_path, change, match):
    from chord_megatron.hf_io import HFCheckpointError, model_config_from_hf

    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 80, "num_attention_heads": 4,
           "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "vocab_size": 96, "max_position_embeddings": 128, "hidden_act": "silu"}  # fmt: skip
    cfg.update(change)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HFCheckpointError, match=match):
        model_config_from_hf(tmp_path)
