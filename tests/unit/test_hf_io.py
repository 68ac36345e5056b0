"""Hugging Face checkpoints in and out of the Megatron model (TP=1, one process), per family.

One spawned process (the Megatron engine initialises torch.distributed for its whole process)
runs, for a tiny random Qwen2 (QKV bias, tied), Qwen3 (q/k norm, head_dim != hidden/heads,
sharded safetensors) and Llama-3 (llama3 rope scaling, untied) checkpoint:
  * HF -> Megatron: the GPTModel's logits equal transformers' within 1e-5 (fp32);
  * the llama3 scaling is really applied (without it the logits move by > 1e-3), and so is
    linear rope scaling (a fourth, Llama checkpoint with rope_type linear);
  * HF -> Megatron -> HF: the exported folder holds the very same tensors, loads in
    transformers (same logits, same greedy generation) with its tokenizer and chat template;
  * Megatron -> HF -> Megatron after a training step is exact.
TP=2 and PP=2 are tests/dist/test_hf_parallel.py.
"""

import json
from pathlib import Path

import pytest
import torch

from tests.support.hf_models import FAMILIES, config_for, make_checkpoint

TP1_FAMILIES = FAMILIES + ("llama_linear",)

SEQ = 40
TOL = 1e-5


def megatron_logits(engine, ids):
    from chord_megatron.train.model import unwrap

    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        return unwrap(engine.model[0])(ids, pos, None)


def _tp1_job(folders, ids, out_root):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chord_megatron.data import ExpertRow
    from chord_megatron.data.batch import build_train_batch
    from chord_megatron.hf.export import export_hf
    from chord_megatron.hf.weights import HFWeights, hf_state_dict
    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.weight_sync.convert import Layout
    from chord_megatron.weight_sync.disk import read_hf_checkpoint

    results = {}
    for family, folder in folders.items():
        r = results[family] = {}
        cfg = config_for(folder)
        src = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            ref = src(ids).logits
        engine = MegatronEngine(cfg, full_state_dict=hf_state_dict(cfg))
        r["logit_gap"] = (megatron_logits(engine, ids) - ref).abs().max().item()
        if family in ("llama", "llama_linear"):
            plain = cfg.replace(**{"model.rope_scaling": "none"})
            r["gap_without_scaling"] = (
                (megatron_logits(MegatronEngine(plain, full_state_dict=hf_state_dict(plain, check=False)), ids) - ref)
                .abs()
                .max()
                .item()
            )

        # HF -> Megatron -> HF: the same tensors, a folder transformers loads and generates with.
        out = Path(out_root) / f"{family}-export"
        export_hf(engine.export_weights(), cfg, out)
        exported = read_hf_checkpoint(out)
        source = {n: p for n, p in src.state_dict().items() if not (cfg.model.tie_embeddings and n == "lm_head.weight")}
        r["same_names"] = sorted(exported) == sorted(source)
        r["same_tensors"] = r["same_names"] and all(torch.equal(exported[n], source[n]) for n in source)
        back = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        with torch.no_grad():
            r["reload_gap"] = (back(ids).logits - ref).abs().max().item()
            prompt = ids[:1, :6]
            g1 = src.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
            g2 = back.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
        r["generates"] = g2.shape[1] > prompt.shape[1] and torch.equal(g1, g2)
        tok = AutoTokenizer.from_pretrained(str(out))
        r["chat_template"] = tok.apply_chat_template(
            [{"role": "user", "content": "what is 3"}], tokenize=False, add_generation_prompt=True
        )
        r["files"] = sorted(p.name for p in out.iterdir())

        # Megatron -> HF -> Megatron, after an update moved the weights off the source checkpoint.
        rows = [ExpertRow(list(range(3, 9)), list(range(10, 18)))] * 4
        engine.train_step(build_train_batch([], torch.zeros(0), rows, pad_id=0), 0, mu=1.0)
        trained = {n: t.clone() for n, t in engine.export_weights()}
        out2 = Path(out_root) / f"{family}-trained"
        export_hf(iter(trained.items()), cfg, out2)
        lazy = HFWeights(out2, Layout.from_model_config(cfg.model))
        again = {n: t.clone() for n, t in MegatronEngine(cfg, full_state_dict=lazy).export_weights()}
        r["round_trip_exact"] = sorted(again) == sorted(trained) and all(
            torch.equal(again[n], trained[n]) for n in trained
        )
        r["moved"] = any(not torch.equal(trained[n], exported_m) for n, exported_m in hf_state_dict(cfg).items())
    return results


@pytest.fixture(scope="module")
def tp1_results(tmp_path_factory):
    from tests.support.dist_harness import run_job

    root = tmp_path_factory.mktemp("hf")
    folders = {f: str(make_checkpoint(root / f, f, shards=(f == "qwen3"))[0]) for f in TP1_FAMILIES}
    ids = torch.randint(3, 60, (2, SEQ), generator=torch.Generator().manual_seed(1))
    return run_job(_tp1_job, world=1, args=(folders, ids, str(root)), timeout=300)[0]


@pytest.mark.parametrize("family", TP1_FAMILIES)
def test_megatron_logits_match_transformers(tp1_results, family):
    r = tp1_results[family]
    assert r["logit_gap"] < TOL, r
    if family.startswith("llama"):
        assert r["gap_without_scaling"] > 1e-3, r  # the rope scaling is applied, and it matters here


@pytest.mark.parametrize("family", FAMILIES)
def test_export_is_the_same_checkpoint_and_loads_in_transformers(tp1_results, family):
    r = tp1_results[family]
    assert r["same_names"] and r["same_tensors"], r
    assert r["reload_gap"] == 0.0 and r["generates"], r
    assert r["chat_template"] == "<|user|>what is 3<|end|><|assistant|>"
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        assert name in r["files"], (name, r["files"])


@pytest.mark.parametrize("family", FAMILIES)
def test_megatron_hf_megatron_round_trip_is_exact(tp1_results, family):
    r = tp1_results[family]
    assert r["moved"] and r["round_trip_exact"], r


# ----------------------------------------------------------------------------------------------
# Config checks: no Megatron needed
# ----------------------------------------------------------------------------------------------
def test_model_section_mismatch_names_the_key(tmp_path):
    from chord_megatron.config import ConfigError
    from chord_megatron.hf.config import check_model_config

    folder, _ = make_checkpoint(tmp_path / "q", "qwen2", tokenizer=False)
    cfg = config_for(folder)
    check_model_config(cfg.model)  # the derived section matches
    for key, value, json_key in (
        ("rotary_base", "10000.0", "rope_theta"),
        ("norm_eps", "1e-5", "rms_norm_eps"),
        ("tie_embeddings", "false", "tie_word_embeddings"),
        ("num_query_groups", "4", "num_key_value_heads"),
        ("qkv_bias", "false", "model_type"),
    ):
        bad = cfg.replace(**{f"model.{key}": value})
        with pytest.raises(ConfigError) as info:
            check_model_config(bad.model)
        msg = str(info.value)
        assert f"config.json: model.{key}: " in msg and json_key in msg and "\n" not in msg, msg


def test_base_weights_loads_hf_path_and_checks_the_section(tmp_path):
    from chord_megatron.config import ConfigError
    from chord_megatron.demo.base_model import base_weights
    from chord_megatron.hf.weights import HFWeights

    folder, model = make_checkpoint(tmp_path / "l", "llama", tokenizer=False)
    cfg = config_for(folder)
    full = base_weights(cfg)
    assert isinstance(full, HFWeights)
    assert torch.equal(full["embedding.word_embeddings.weight"], model.model.embed_tokens.weight.detach())
    assert len(full) == len(list(full)) == 2 + 2 * 6 + 1  # embedding, 2 x (2 norms, qkv, proj, fc1, fc2), norm, output
    with pytest.raises(ConfigError, match="model.hidden_size"):
        base_weights(cfg.replace(**{"model.hidden_size": "32"}))
    # transformer-engine layer specs name the fused norms differently: the same tensors
    te = "decoder.layers.1.self_attention.linear_qkv.layer_norm_weight"
    assert te in full and torch.equal(full[te], model.model.layers[1].input_layernorm.weight.detach())
    te = "decoder.layers.0.mlp.linear_fc1.layer_norm_weight"
    assert torch.equal(full[te], model.model.layers[0].post_attention_layernorm.weight.detach())


def test_config_json_without_source_loads_in_transformers(tmp_path):
    """Exporting a model trained from scratch (no hf_path): config.json comes from the model section."""
    from transformers import AutoConfig

    from chord_megatron.config import load_config
    from chord_megatron.hf.config import check_model_config
    from chord_megatron.hf.export import hf_config_dict

    cases = {
        "llama": [],
        "qwen2": ["model.qkv_bias=true"],
        "qwen3": ["model.qk_layernorm=true", "model.head_dim=32"],
        "llama-rope3": ["model.rope_scaling=llama3", "model.rope_scaling_factor=32"],
    }
    for name, extra in cases.items():
        cfg = load_config(None, extra)
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(hf_config_dict(cfg, dtype=torch.float32)))
        back = AutoConfig.from_pretrained(str(d))
        check_model_config(cfg.model, d)  # what we wrote describes the same architecture
        assert back.model_type == name.split("-")[0] and back.architectures[0].endswith("ForCausalLM")
