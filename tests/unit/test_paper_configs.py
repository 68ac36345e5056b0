"""configs/paper/*.yaml carry the paper's published settings (shared/chord-spec.md) and the real
architectures of Qwen2.5-7B-Instruct and Llama-3.2-3B-Instruct.

The architecture check runs the same code a run does (hf.config.check_model_config) against the
models' actual config.json contents, reproduced below from the Hugging Face model repositories
(Qwen/Qwen2.5-7B-Instruct, meta-llama/Llama-3.2-3B-Instruct)."""

import json
import math
import re
from pathlib import Path

import pytest

from chord_megatron.algo import mu_schedule
from chord_megatron.config import load_config
from chord_megatron.data.batch import expert_rows_per_step

ROOT = Path(__file__).resolve().parents[2]
PAPER = sorted((ROOT / "configs" / "paper").glob("*.yaml"))

QWEN25_7B_INSTRUCT = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 152064,
}
LLAMA32_3B_INSTRUCT = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 3072,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 24,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}


def kind_of(path: Path) -> str:
    return "math" if "math" in path.name else "tool"


def test_the_paper_configs_are_all_there():
    names = {p.stem for p in PAPER}
    for model in ("qwen2.5-7b-math", "llama3.2-3b-toolace"):
        for variant in ("mu", "phi"):
            for layout in ("1x8", "4x8"):
                assert f"{model}-chord-{variant}-{layout}" in names


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_model_section_is_the_real_architecture(path, tmp_path):
    from chord_megatron.hf.config import check_model_config

    cfg = load_config(path)
    (tmp_path / "config.json").write_text(
        json.dumps(QWEN25_7B_INSTRUCT if kind_of(path) == "math" else LLAMA32_3B_INSTRUCT)
    )
    check_model_config(cfg.model, tmp_path)  # raises ConfigError naming the first key that differs
    assert cfg.sglang["model_path"] == cfg.model.hf_path
    assert cfg.model.max_seq_length >= cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_published_hyperparameters(path):
    cfg = load_config(path)
    r, a, o = cfg.rollout, cfg.algorithm, cfg.optim
    # shared by every setting
    assert r.samples_per_prompt == 8 and r.temperature == 1.0 and r.top_p == 1.0 and r.sync_every == 1
    assert (a.clip_low, a.clip_high, a.dual_clip, a.logratio_clamp) == (0.2, 0.2, 3.0, 20.0)
    assert (o.adam_beta1, o.adam_beta2, o.grad_clip, o.lr_schedule) == (0.9, 0.999, 1.0, "constant")
    assert o.lr in (1e-6, 5e-6, 1e-5) and o.weight_decay == 0.0
    assert r.engine == "sglang" and cfg.sglang.get("router", {}).get("policy")
    variant = "mu" if "chord-mu" in path.name else "phi"
    if kind_of(path) == "math":
        assert cfg.model.name == "qwen2.5-7b-instruct" and cfg.data.reward == "math"
        assert r.prompts_per_step == 32 and r.max_new_tokens == 16384 and cfg.data.max_response_tokens == 16384
        assert expert_rows_per_step(32 * 8, a.expert_data_ratio, pure_sft_rows=0) == 64
        if variant == "mu":  # cosine 0.9 -> 0.05 over 200 steps, no warmup, phi off
            assert (a.mu.warmup, a.mu.decay, a.mu.peak, a.mu.valley, a.token_weight) == (0, 200, 0.9, 0.05, "none")
    else:
        assert cfg.model.name == "llama-3.2-3b-instruct" and cfg.data.reward == "tool_call"
        assert r.prompts_per_step == 96
        assert expert_rows_per_step(96 * 8, a.expert_data_ratio, pure_sft_rows=0) == 96
        if variant == "mu":  # 0.6 -> 0.0 over 20 steps, phi off
            assert (a.mu.warmup, a.mu.decay, a.mu.peak, a.mu.valley, a.token_weight) == (0, 20, 0.6, 0.0, "none")
    if variant == "phi":  # constant mu = 0.1, phi = p(1 - p)
        assert (a.mu.warmup, a.mu.decay, a.mu.peak, a.mu.valley, a.token_weight) == (0, 0, 0.1, 0.1, "p1mp")
    m = a.mu
    schedule = [
        mu_schedule(s, warmup=m.warmup, decay=m.decay, peak=m.peak, valley=m.valley) for s in (0, m.decay, 10**4)
    ]
    assert math.isclose(schedule[0], m.peak) and math.isclose(schedule[1], m.valley) and schedule[2] == m.valley
    assert not (m.adaptive or m.sft_steps)


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_parallel_layout_fits_h100_nodes(path):
    import dataclasses

    from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: F401 - fields below

    cfg = load_config(path)
    p, m = cfg.parallel, cfg.model
    gpus_per_node = 8
    assert gpus_per_node % p.tensor == 0 and m.vocab_size % p.tensor == 0 and p.pipeline == 1
    trainer_gpus = 8 if path.stem.endswith("1x8") else 8 * (4 - cfg.launch.rollout_nodes)
    dp = trainer_gpus // (p.tensor * p.pipeline)
    rows = cfg.rollout.prompts_per_step * 8
    assert dp * p.tensor * p.pipeline == trainer_gpus and rows % dp == 0
    server_gpus = int(cfg.sglang.get("tp_size", 1))
    assert gpus_per_node % server_gpus == 0
    assert cfg.rollout.weight_sync == ("tensor" if path.stem.endswith("1x8") else "nccl")
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    assert set(cfg.megatron) <= fields


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_gpu_speed_settings(path):
    """What a paper run needs to use its GPUs well: transformer-engine required (no silent fallback
    to the local layers), packed rows (otherwise every row pads to the step's longest, ~17k tokens),
    sequence parallelism whenever the model is split over tensor-parallel ranks."""
    cfg = load_config(path)
    assert cfg.model.transformer_impl == "transformer_engine"
    assert cfg.train.pack_sequences
    assert cfg.parallel.sequence_parallel == (cfg.parallel.tensor > 1)


@pytest.mark.parametrize("path", [p for p in PAPER if p.stem.endswith("4x8")], ids=lambda p: p.stem)
def test_the_4x8_header_layout_is_what_the_plan_makes_of_the_config(path):
    """`chord launch plan CONFIG --nodes 4` (the header's command, no --rollout-nodes) gives the
    rollout / training node split and DP the header states: the count lives in launch.rollout_nodes."""
    from chord_megatron.commands.launch.plan import plan_launch

    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    header = " ".join(header.replace("#", " ").split())
    m = re.search(
        r"Four nodes of 8 H100, disaggregated: (\d) rollout nodes? .*? and (\d) training nodes? .*?DP=(\d+)\)", header
    )
    assert m, header
    rollout, training, dp = map(int, m.groups())
    assert f"chord launch plan configs/paper/{path.name} --nodes 4 " in header + " " and "--rollout-nodes" not in header
    cfg = load_config(path)
    assert cfg.launch.rollout_nodes == rollout
    plan = plan_launch(cfg, nodes=4, gpus_per_node=8)
    assert (plan.rollout_nodes, plan.train_nodes, plan.layout.dp) == (rollout, training, dp)
