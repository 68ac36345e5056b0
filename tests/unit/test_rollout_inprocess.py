"""The in-process (transformers) engine: log-probs equal a teacher-forced forward, sampling
controls are honoured, reproducible with a seed, and weight updates take effect (tied too)."""

import math

import pytest
import torch

from chord_megatron.config import ModelConfig
from chord_megatron.rollout.engine import RolloutError, SamplingParams
from chord_megatron.rollout.inprocess import InProcessEngine, build_hf_model, teacher_forced_logprobs, top_p_mask

pytest.importorskip("transformers")

TINY = dict(
    num_layers=2,
    hidden_size=64,
    ffn_hidden_size=176,
    num_attention_heads=4,
    num_query_groups=2,
    vocab_size=64,
    max_seq_length=128,
)
PROMPTS = [[3, 17, 5, 9], [8, 1], [40, 41, 42, 43, 44, 45]]


@pytest.fixture(scope="module", params=["qwen2_tied", "llama_untied"])
def model(request):
    cfg = ModelConfig(**TINY, qkv_bias=request.param == "qwen2_tied", tie_embeddings=request.param == "qwen2_tied")
    return build_hf_model(cfg, seed=1)


def test_architecture_matches_config(model):
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (4, 2, 176)
    names = dict(model.named_parameters())
    assert "model.layers.1.mlp.gate_proj.weight" in names and "model.layers.0.input_layernorm.weight" in names
    if cfg.model_type == "qwen2":
        assert "model.layers.0.self_attn.q_proj.bias" in names and cfg.tie_word_embeddings
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    else:
        assert "lm_head.weight" in names and not cfg.tie_word_embeddings


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_logprobs_equal_teacher_forced_forward(model, temperature):
    engine = InProcessEngine(model)
    sp = SamplingParams(max_new_tokens=12, temperature=temperature, seed=7)
    rollouts = engine.generate(PROMPTS, 3, sp)
    assert len(rollouts) == 9
    worst = 0.0
    for r in rollouts:
        ref = teacher_forced_logprobs(model, r.prompt_ids, r.response_ids, temperature)
        got = torch.tensor(r.logprobs)
        assert got.shape == ref.shape and len(r.response_ids) == 12
        worst = max(worst, (got - ref).abs().max().item())
    assert worst < 1e-5
    # The temperature really enters: at T != 1 the T=1 log-probs differ clearly.
    if temperature != 1.0:
        r = rollouts[0]
        plain = teacher_forced_logprobs(model, r.prompt_ids, r.response_ids, 1.0)
        assert (plain - torch.tensor(r.logprobs)).abs().max().item() > 1e-2


def test_seed_reproducible_and_samples_differ(model):
    engine = InProcessEngine(model)
    a = engine.generate(PROMPTS[:2], 4, SamplingParams(max_new_tokens=10, seed=3))
    b = engine.generate(PROMPTS[:2], 4, SamplingParams(max_new_tokens=10, seed=3))
    c = engine.generate(PROMPTS[:2], 4, SamplingParams(max_new_tokens=10, seed=4))
    assert [r.response_ids for r in a] == [r.response_ids for r in b]
    assert [r.logprobs for r in a] == [r.logprobs for r in b]
    assert [r.response_ids for r in a] != [r.response_ids for r in c]
    # The samples of one group are different draws, not copies.
    assert len({tuple(r.response_ids) for r in a[:4]}) > 1
    assert [(r.prompt_index, r.sample_index) for r in a] == [(p, s) for p in range(2) for s in range(4)]


def test_batching_rows_does_not_change_the_draws(model):
    sp = SamplingParams(max_new_tokens=6, seed=11)
    big = InProcessEngine(model, max_batch_rows=64).generate(PROMPTS[:1], 5, sp)
    small = InProcessEngine(model, max_batch_rows=2).generate(PROMPTS[:1], 5, sp)
    # Different batch shapes consume the generator differently, but each run is complete and valid.
    assert [(r.prompt_index, r.sample_index) for r in small] == [(0, s) for s in range(5)]
    for r in big + small:
        ref = teacher_forced_logprobs(model, r.prompt_ids, r.response_ids)
        assert (torch.tensor(r.logprobs) - ref).abs().max().item() < 1e-5


def test_stop_token_ends_response_and_is_kept(model):
    engine = InProcessEngine(model)
    # Same seed, same draws: a token the free run emits must end the stopped run right there.
    sp_free = SamplingParams(max_new_tokens=8, seed=5)
    free = engine.generate(PROMPTS[:1], 1, sp_free)[0]
    stop_tok = free.response_ids[2]  # a token the model does emit at step 3 with this seed
    stopped = engine.generate(PROMPTS[:1], 1, SamplingParams(max_new_tokens=8, seed=5, stop_token_ids=(stop_tok,)))[0]
    first = free.response_ids.index(stop_tok)
    assert stopped.response_ids == free.response_ids[: first + 1]
    assert stopped.finish_reason == "stop" and free.finish_reason == "length"
    assert len(stopped.logprobs) == len(stopped.response_ids)


def test_engine_eos_token_stops(model):
    free = InProcessEngine(model).generate(PROMPTS[:1], 1, SamplingParams(max_new_tokens=8, seed=5))[0]
    eos = free.response_ids[0]
    r = InProcessEngine(model, eos_token_ids=[eos]).generate(PROMPTS[:1], 1, SamplingParams(max_new_tokens=8, seed=5))[
        0
    ]
    assert r.response_ids == [eos] and r.finish_reason == "stop"


def test_tiny_top_p_is_greedy(model):
    r = InProcessEngine(model).generate(PROMPTS[:1], 2, SamplingParams(max_new_tokens=6, top_p=1e-6, seed=1))
    for x in r:
        ids = torch.tensor([x.prompt_ids + x.response_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        greedy = logits[len(x.prompt_ids) - 1 : -1].argmax(-1).tolist()
        assert x.response_ids == greedy
    # Log-probs are of the full distribution at T, not renormalised over the top-p set.
    assert all(lp < 0 for lp in r[0].logprobs)


def test_top_p_mask_keeps_smallest_prefix():
    probs = torch.tensor([[0.1, 0.5, 0.3, 0.1]])
    assert top_p_mask(probs, 0.7).tolist() == [[False, True, True, False]]
    assert top_p_mask(probs, 0.5).tolist() == [[False, True, False, False]]
    assert top_p_mask(probs, 1.0).all()


def test_prompt_too_long_is_refused(model):
    with pytest.raises(RolloutError, match="prompt 0"):
        InProcessEngine(model).generate([[1] * 120], 1, SamplingParams(max_new_tokens=16))


# ----------------------------------------------------------------------------------------------
# update_weights
# ----------------------------------------------------------------------------------------------
def _fresh(tied: bool):
    cfg = ModelConfig(**TINY, qkv_bias=tied, tie_embeddings=tied)
    return build_hf_model(cfg, seed=1), build_hf_model(cfg, seed=2)


@pytest.mark.parametrize("tied", [True, False])
def test_update_weights_makes_engine_serve_new_model(tied):
    old, new = _fresh(tied)
    engine = InProcessEngine(old)
    sp = SamplingParams(max_new_tokens=8, seed=9)
    before = engine.generate(PROMPTS[:1], 2, sp)
    engine.update_weights(((n, p.detach().clone()) for n, p in new.named_parameters()), version=3)
    after = engine.generate(PROMPTS[:1], 2, sp)
    assert engine.weight_version == "3" and all(r.weight_version == "3" for r in after)
    assert before[0].weight_version is None
    for r in after:  # served log-probs now match the NEW model's forward
        ref = teacher_forced_logprobs(new, r.prompt_ids, r.response_ids)
        assert (torch.tensor(r.logprobs) - ref).abs().max().item() < 1e-5
    assert [r.response_ids for r in after] == [
        r.response_ids for r in InProcessEngine(new).generate(PROMPTS[:1], 2, sp)
    ]


def test_tied_lm_head_alone_updates_the_embedding():
    old, new = _fresh(True)
    engine = InProcessEngine(old)
    engine.update_weights([("lm_head.weight", new.model.embed_tokens.weight.detach().clone())], version="h")
    assert torch.equal(old.model.embed_tokens.weight, new.model.embed_tokens.weight)
    assert torch.equal(old.lm_head.weight, new.model.embed_tokens.weight)


def test_tied_lm_head_that_differs_is_refused_untouched():
    old, new = _fresh(True)
    before = old.model.embed_tokens.weight.detach().clone()
    emb = new.model.embed_tokens.weight.detach().clone()
    with pytest.raises(ValueError, match="tied embeddings"):
        InProcessEngine(old).update_weights([("model.embed_tokens.weight", emb), ("lm_head.weight", emb + 1)], "x")
    assert torch.equal(old.model.embed_tokens.weight, before)


@pytest.mark.parametrize(
    "bad,needle",
    [
        (("model.layers.9.mlp.up_proj.weight", torch.zeros(176, 64)), "unknown parameter names"),
        (("model.norm.weight", torch.zeros(65)), r"shape \(65,\)"),
    ],
)
def test_update_weights_rejects_bad_names_and_shapes_atomically(bad, needle):
    old, _ = _fresh(False)
    norm_before = old.model.norm.weight.detach().clone()
    good = ("model.layers.0.input_layernorm.weight", torch.full((64,), 3.0))
    with pytest.raises(ValueError, match=needle):
        InProcessEngine(old).update_weights([good, bad], "x")
    assert torch.equal(old.model.norm.weight, norm_before)
    assert not torch.equal(old.model.layers[0].input_layernorm.weight, torch.full((64,), 3.0))


def test_update_weights_in_buckets_casts_dtype():
    old, new = _fresh(False)
    engine = InProcessEngine(old)
    named = [(n, p.detach().to(torch.bfloat16)) for n, p in new.named_parameters()]
    engine.update_weights(named[:5], "1")
    engine.update_weights(named[5:], "1")
    for (n, p), (_, q) in zip(old.named_parameters(), new.named_parameters()):
        assert p.dtype == torch.float32
        assert torch.equal(p, q.to(torch.bfloat16).float()), n
    assert not math.isnan(engine.generate(PROMPTS[:1], 1, SamplingParams(max_new_tokens=3))[0].logprobs[0])
