"""Tiny random Hugging Face checkpoints of each supported family, made on the spot (no hub).

    make_checkpoint(folder, "qwen2" | "qwen3" | "llama", shards=False) -> (folder, hf_model)
    config_for(folder, *overrides) -> a Config whose model section is the checkpoint's

qwen2: GQA, QKV bias, tied embeddings, a rope theta no default has;
qwen3: q/k RMSNorm, head_dim != hidden / heads, untied;
llama: Llama-3.2-style llama3 rope scaling (factor 8, low/high 1/4, original context 8192), untied.
Every parameter is drawn at random (biases and norm gains too, which transformers initialises
to 0 and 1), so a tensor in the wrong place changes the logits.
"""

from pathlib import Path

import torch

VOCAB = 96
FAMILIES = ("qwen2", "qwen3", "llama")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def hf_config(family: str):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=VOCAB,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if family == "qwen2":
        return Qwen2Config(
            hidden_size=32,
            intermediate_size=48,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 12345.0},
            **common,
        )
    if family == "qwen3":
        return Qwen3Config(
            hidden_size=32,
            intermediate_size=40,
            head_dim=16,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            attention_bias=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
            **common,
        )
    if family == "llama_linear":  # linear position interpolation (megatron's seq_len_interpolation_factor)
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=80,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
            **common,
        )
    if family == "llama":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500_000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=80,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            attention_bias=False,
            mlp_bias=False,
            rope_parameters=rope,
            **common,
        )
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
    words = (
        [str(i) for i in range(20)]
        + list("abcdefghijklmnopqrstuvwxyz")
        + ["what", "is", "the", "answer", "boxed", "+", "=", "?", ".", "{", "}", "\\", "think", "<", ">", "/"]
    )
    vocab = {t: i for i, t in enumerate(specials + words)}
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=False)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="?",
        additional_special_tokens=specials[3:],
    )
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


def config_for(folder, *extra):
    """A config whose model section is the checkpoint's (as a user's YAML would spell it)."""
    import dataclasses

    from chord_megatron.config import load_config
    from chord_megatron.hf.config import model_config_from_hf

    m = model_config_from_hf(folder, max_seq_length=64)
    model = [f"model.{k}={v}" for k, v in dataclasses.asdict(m).items() if v is not None]
    return load_config(
        None,
        model
        + [
            "model.dtype=fp32",
            "data.max_prompt_tokens=16",
            "data.max_response_tokens=16",
            "rollout.max_new_tokens=16",
            "train.micro_batch_size=4",
            "optim.lr=0.01",
            *extra,
        ],
    )
