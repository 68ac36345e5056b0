"""Megatron <-> HF conversion against an independent, loop-by-loop packing of the same tensors.

(The end-to-end check against a real Megatron GPTModel, log-probs within 1e-5, is
tests/integration/test_weight_sync_megatron.py.)"""

import pytest
import torch

from chord_megatron.weight_sync.convert import Layout, hf_to_megatron, megatron_to_hf, pack_qkv, split_qkv

H, F, V, D = 32, 48, 40, 8


def hf_state(layout: Layout, layers=2, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    nq, nkv = layout.num_heads * D, layout.num_kv_heads * D
    sd = {"model.embed_tokens.weight": r(V, H), "model.norm.weight": r(H)}
    for i in range(layers):
        p = f"model.layers.{i}."
        sd.update(
            {
                p + "input_layernorm.weight": r(H),
                p + "post_attention_layernorm.weight": r(H),
                p + "self_attn.q_proj.weight": r(nq, H),
                p + "self_attn.k_proj.weight": r(nkv, H),
                p + "self_attn.v_proj.weight": r(nkv, H),
                p + "self_attn.o_proj.weight": r(H, nq),
                p + "mlp.gate_proj.weight": r(F, H),
                p + "mlp.up_proj.weight": r(F, H),
                p + "mlp.down_proj.weight": r(H, F),
            }
        )
        if bias:
            sd.update(
                {
                    p + "self_attn.q_proj.bias": r(nq),
                    p + "self_attn.k_proj.bias": r(nkv),
                    p + "self_attn.v_proj.bias": r(nkv),
                }
            )
    if not layout.tie_embeddings:
        sd["lm_head.weight"] = r(V, H)
    return sd


def megatron_by_hand(hf, layout: Layout, layers=2, bias=False):
    """Megatron's layout written out head by head: for each KV group, its query heads, then k, then v."""
    q = layout.num_heads // layout.num_kv_heads
    out = {
        "embedding.word_embeddings.weight": hf["model.embed_tokens.weight"],
        "decoder.final_layernorm.weight": hf["model.norm.weight"],
    }
    for i in range(layers):
        p, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        for kind in ("weight", "bias") if bias else ("weight",):
            wq, wk, wv = (hf[p + f"self_attn.{x}_proj.{kind}"] for x in "qkv")
            rows = []
            for grp in range(layout.num_kv_heads):
                for h in range(q):
                    head = grp * q + h
                    rows.append(wq[head * D : (head + 1) * D])
                rows.append(wk[grp * D : (grp + 1) * D])
                rows.append(wv[grp * D : (grp + 1) * D])
            out[m + f"self_attention.linear_qkv.{kind}"] = torch.cat(rows)
        out[m + "input_layernorm.weight"] = hf[p + "input_layernorm.weight"]
        out[m + "pre_mlp_layernorm.weight"] = hf[p + "post_attention_layernorm.weight"]
        out[m + "self_attention.linear_proj.weight"] = hf[p + "self_attn.o_proj.weight"]
        out[m + "mlp.linear_fc1.weight"] = torch.cat([hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"]])
        out[m + "mlp.linear_fc2.weight"] = hf[p + "mlp.down_proj.weight"]
    if not layout.tie_embeddings:
        out["output_layer.weight"] = hf["lm_head.weight"]
    return out


LAYOUTS = [
    pytest.param(Layout(4, 2, D, True), True, id="gqa-tied-bias"),
    pytest.param(Layout(4, 4, D, False), False, id="mha-untied"),
    pytest.param(Layout(4, 1, D, False), True, id="mqa-untied-bias"),
]


@pytest.mark.parametrize("layout,bias", LAYOUTS)
def test_megatron_to_hf_matches_hand_packing(layout, bias):
    hf = hf_state(layout, bias=bias)
    meg = megatron_by_hand(hf, layout, bias=bias)
    out = dict(megatron_to_hf(meg.items(), layout))
    assert set(out) == set(hf)
    for name, t in hf.items():
        assert torch.equal(out[name], t), name


@pytest.mark.parametrize("layout,bias", LAYOUTS)
def test_hf_to_megatron_is_the_inverse(layout, bias):
    hf = hf_state(layout, bias=bias)
    meg = megatron_by_hand(hf, layout, bias=bias)
    back = dict(hf_to_megatron(hf.items(), layout))
    assert set(back) == set(meg)
    for name, t in meg.items():
        assert torch.equal(back[name], t), name
    again = dict(megatron_to_hf(back.items(), layout))
    assert all(torch.equal(again[n], hf[n]) for n in hf)


def test_qkv_split_is_not_a_plain_chunk():
    # With GQA a naive thirds/contiguous split would be wrong; make sure the packing matters.
    layout = Layout(4, 2, D, False)
    hf = hf_state(layout)
    meg = megatron_by_hand(hf, layout)
    packed = meg["decoder.layers.0.self_attention.linear_qkv.weight"]
    naive_q = packed[: 4 * D]
    assert not torch.equal(naive_q, hf["model.layers.0.self_attn.q_proj.weight"])
    q, k, v = split_qkv(packed, layout)
    assert torch.equal(pack_qkv(q, k, v, layout), packed)


def test_tied_lm_head_optional_copy():
    layout = Layout(4, 2, D, True)
    meg = megatron_by_hand(hf_state(layout), layout)
    plain = dict(megatron_to_hf(meg.items(), layout))
    assert "lm_head.weight" not in plain
    with_head = dict(megatron_to_hf(meg.items(), layout, lm_head_when_tied=True))
    assert torch.equal(with_head["lm_head.weight"], meg["embedding.word_embeddings.weight"])
    # and back: an equal lm_head is dropped, a different one is an error
    back = dict(hf_to_megatron(with_head.items(), layout))
    assert "output_layer.weight" not in back and set(back) == set(meg)
    bad = dict(with_head, **{"lm_head.weight": with_head["lm_head.weight"] + 1})
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        list(hf_to_megatron(bad.items(), layout))
    with pytest.raises(ValueError, match="embeddings are tied"):
        list(megatron_to_hf([("output_layer.weight", torch.zeros(V, H))], layout))


def test_transformer_engine_norm_names_are_accepted():
    layout = Layout(4, 2, D, True)
    t = torch.arange(H, dtype=torch.float32)
    out = dict(
        megatron_to_hf(
            [
                ("decoder.layers.3.self_attention.linear_qkv.layer_norm_weight", t),
                ("decoder.layers.3.mlp.linear_fc1.layer_norm_weight", t + 1),
            ],
            layout,
        )
    )
    assert torch.equal(out["model.layers.3.input_layernorm.weight"], t)
    assert torch.equal(out["model.layers.3.post_attention_layernorm.weight"], t + 1)


@pytest.mark.parametrize(
    "name",
    [
        "decoder.layers.0.self_attention.q_layernorm.bias",
        "embedding.position_embeddings.weight",
        "decoder.layers.0.mlp.router.weight",
    ],
)
def test_unknown_megatron_names_are_errors(name):
    with pytest.raises(ValueError, match="no Hugging Face name"):
        list(megatron_to_hf([(name, torch.zeros(2))], Layout(4, 2, D, True)))


def test_incomplete_or_unknown_hf_tensors_are_errors():
    layout = Layout(4, 2, D, False)
    hf = hf_state(layout)
    partial = {k: v for k, v in hf.items() if k != "model.layers.1.self_attn.v_proj.weight"}
    with pytest.raises(ValueError, match=r"incomplete fused tensors .*linear_qkv.weight.*\['v'\]"):
        list(hf_to_megatron(partial.items(), layout))
    with pytest.raises(ValueError, match="no Megatron name"):
        list(hf_to_megatron([("model.layers.0.mlp.experts.0.w1", torch.zeros(1))], layout))
    skipped = list(hf_to_megatron([("model.layers.0.self_attn.rotary_emb.inv_freq", torch.zeros(4))], layout))
    assert skipped == []


def test_wrong_qkv_size_is_an_error():
    with pytest.raises(ValueError, match="linear_qkv has 10 rows"):
        split_qkv(torch.zeros(10, H), Layout(4, 2, D, True))


def test_layout_from_model_config():
    from chord_megatron.config import ModelConfig

    lay = Layout.from_model_config(ModelConfig(hidden_size=64, num_attention_heads=4, num_query_groups=2))
    assert (lay.num_heads, lay.num_kv_heads, lay.head_dim, lay.q_per_group, lay.tie_embeddings) == (4, 2, 16, 2, True)
    assert Layout.from_model_config(ModelConfig(), {"kv_channels": 32}).head_dim == 32
