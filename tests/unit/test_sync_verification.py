"""The served-weights check after a sync: precision noise passes, wrong weights and NaN fail.

A tiny random Qwen2 (transformers, built here) plays both sides. The "engine" samples probe
responses and reports their log-probs; the "trainer" scores the same tokens. The statistic is
the token-mean KL (k3) of train.metrics.logprob_mismatch, judged by sync.check_served at the
tolerance sync.verify_tolerance picks for the run's precision.
"""

import copy

import pytest
import torch

from chord_megatron.config import load_config
from chord_megatron.train.metrics import logprob_mismatch
from chord_megatron.weight_sync.verified import SyncVerificationError, check_served, verify_tolerance

VOCAB, PROMPT, NEW = 256, 8, 24


def _model(seed=0, dtype=torch.float32, attn="sdpa"):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        attn_implementation=attn,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # a spread-out next-token distribution, as a trained model has
        for p in model.parameters():
            p.normal_(0, 0.08) if p.dim() > 1 else p.normal_(1.0, 0.1)
    return model.to(dtype)


def _token_logprobs(model, ids):
    with torch.no_grad():
        logits = model(ids).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]


def _probe(engine):
    """The engine samples 16 responses (temperature 1) and reports their log-probs."""
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, VOCAB, (16, PROMPT), generator=gen)
    with torch.no_grad():
        ids = engine.generate(
            prompts, max_new_tokens=NEW, do_sample=True, top_k=0, top_p=1.0, min_new_tokens=NEW, pad_token_id=0
        )
    mask = torch.zeros(ids.shape[0], ids.shape[1] - 1, dtype=torch.bool)
    mask[:, PROMPT - 1 :] = True  # response tokens
    return ids, _token_logprobs(engine, ids), mask


def _stats(trainer, engine):
    ids, served, mask = _probe(engine)
    return logprob_mismatch(_token_logprobs(trainer, ids), served, mask)


def _trained(model, steps=5, lr=3e-3):
    """The trainer's weights after a few Adam updates on random data (a stale engine keeps the old ones)."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(2)
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (8, 16), generator=gen)
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


BF16 = verify_tolerance(load_config(None, ["model.dtype=bf16"]))
FP32 = verify_tolerance(load_config(None, ["model.dtype=fp32"]))


def test_tolerance_follows_precision_and_config():
    assert BF16 == 1e-2 and FP32 == 1e-4
    assert (
        verify_tolerance(
            load_config(None, ["model.dtype=fp32", "rollout.engine=sglang", "rollout.router_url=http://r:1"])
        )
        == BF16
    )
    assert verify_tolerance(load_config(None, ["rollout.verify_tolerance=0.5"])) == 0.5


def test_bf16_noise_passes_where_the_old_max_gap_rule_stopped_the_run():
    trainer = _model(dtype=torch.bfloat16, attn="sdpa")
    engine = _model(dtype=torch.bfloat16, attn="eager")  # same weights, other kernels: bf16 vs bf16
    stats = _stats(trainer, engine)
    check_served(stats, BF16, "bf16 vs bf16")
    # The same weights served in bf16 to an fp32 trainer also pass.
    check_served(_stats(_model(dtype=torch.float32), engine), BF16, "bf16 vs fp32")
    assert stats["logp_mismatch_max"] > 1e-3, stats  # the max-|gap| <= 1e-3 rule would have stopped here


def test_fp32_sides_agree_far_below_the_fp32_tolerance():
    stats = _stats(_model(attn="sdpa"), _model(attn="eager"))
    check_served(stats, FP32, "fp32")
    assert stats["logp_mismatch_kl"] < FP32 / 100


def test_swapped_layers_fail_even_at_the_bf16_tolerance():
    trainer = _model()
    engine = copy.deepcopy(trainer)
    layers = engine.model.layers
    layers[0], layers[1] = layers[1], layers[0]
    with pytest.raises(SyncVerificationError, match="not serving the trained weights"):
        check_served(_stats(trainer, engine.to(torch.bfloat16)), BF16, "swapped")


def test_a_stale_output_layer_fails():
    """The classic sync bug (tied / untied embeddings): the engine serves the trained model but
    kept its output layer from before the last few updates.

    Measured on this model: stale output layer KL ~0.025, a whole stale layer ~0.024, the fully
    synced bf16 copy ~6e-6. One small tensor a few steps old (a q_proj) gives ~1e-5, inside bf16
    noise: no log-prob check can see that; only comparing the weights themselves could."""
    base = _model()
    trainer = _trained(base)
    engine = copy.deepcopy(trainer)
    engine.lm_head.weight.data.copy_(base.lm_head.weight)
    check_served(_stats(trainer, copy.deepcopy(trainer).to(torch.bfloat16)), BF16, "control: fully synced")
    with pytest.raises(SyncVerificationError, match="KL"):
        check_served(_stats(trainer, engine.to(torch.bfloat16)), BF16, "stale")


def test_nan_or_inf_fails_whatever_the_tolerance():
    trainer = _model()
    ids, served, mask = _probe(trainer)
    for bad in (float("nan"), float("inf"), -float("inf")):
        s = served.clone()
        s[3, PROMPT + 2] = bad
        stats = logprob_mismatch(_token_logprobs(trainer, ids), s, mask)
        assert stats["logp_mismatch_nonfinite"] == 1 and stats["logp_mismatch_kl"] < 1e-6
        with pytest.raises(SyncVerificationError, match="NaN or infinite"):
            check_served(stats, 1e9, "nan")


def test_kl_is_the_k3_estimate():
    t = torch.tensor([[0.0, -1.0, -2.0, -0.5]])
    r = torch.tensor([[0.0, -1.5, -1.0, -0.5]])
    mask = torch.tensor([[False, True, True, True]])
    d = torch.tensor([0.5, -1.0, 0.0])
    want = float((d.exp() - 1 - d).mean())
    assert logprob_mismatch(t, r, mask)["logp_mismatch_kl"] == pytest.approx(want, rel=1e-6)
