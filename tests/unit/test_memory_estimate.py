"""GPU 0's memory estimate (commands/launch/memory.py) term by term and phase by phase, against
arithmetic done here from first principles (parameter counts by hand, SGLang 0.5.23's reserve
formula written out), for a tiny config and for the Qwen2.5-7B 1x8 colocated paper config; and
the plan's printed table, which names each term's assumption."""

import pathlib

import pytest

from chord_megatron.cli import main
from chord_megatron.commands.launch.layout import ParallelLayout
from chord_megatron.commands.launch.memory import estimate_memory
from chord_megatron.commands.launch.sglang_memory import sglang_dynamic, sglang_static
from chord_megatron.config import load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
QWEN_1X8 = ROOT / "configs/paper/qwen2.5-7b-math-chord-mu-1x8.yaml"
GIB, MIB = 2**30, 2**20

TINY = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.ffn_hidden_size=128",
    "model.num_attention_heads=4",
    "model.num_query_groups=2",
    "model.vocab_size=1000",
    "model.max_seq_length=256",
    "model.tie_embeddings=false",
    "model.dtype=bf16",
    "parallel.tensor=2",
    "parallel.sequence_parallel=true",
    "train.pack_sequences=true",
    "train.pack_length=128",
    "train.micro_batch_size=2",
    "rollout.engine=sglang",
    "rollout.router_url=http://r:1",
    "rollout.sync_bucket_mb=1",
    "sglang.tp_size=1",
    "sglang.mem_fraction_static=0.25",
    "sglang.chunked_prefill_size=4096",
    "sglang.cuda_graph_max_bs_decode=16",
    "sglang.enable_memory_saver=true",
]
# By hand: per layer q/k/v/o = 64x64 + 2 x 64x32 (2 groups x 16) + 64x64, SwiGLU 3 x 64x128,
# two norms 2 x 64; two layers, embedding and output 1000 x 64 each, the final norm 64.
TINY_PARAMS = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64) + 2 * 1000 * 64 + 64


def tiny(*extra, release=False):
    cfg = load_config(None, TINY + [f"rollout.release_sglang_memory={str(release).lower()}", *extra])
    layout = ParallelLayout(tp=2, pp=1, vpp=None, cp=1, dp=2, world=4)
    return estimate_memory(cfg, layout, gpu_memory_gib=16, colocated_sglang=True, sglang_gpus=1)


def tiny_expected():
    P = TINY_PARAMS / 2  # TP 2, one pipeline stage
    persistent = P * 2 + P * 4 + P * 12 / 2 + 3 * GIB  # bf16 weights, fp32 grads, Adam over DP 2
    t = 2 * 128  # two packed rows of pack_length tokens
    activations = 2 * t * 64 * 34 / 2  # two layers, sequence parallel over TP 2
    logits = t * 1000 / 2 * 2  # bf16, vocabulary split over TP 2
    kernel = t * 20 * 4
    sync = 2 * max(1 * MIB, 1000 * 64 * 2)  # two buckets; the largest tensor is 1000 x 64 bf16
    static = 0.25 * 16 * GIB
    dynamic = (512 + 4096 * 1.5 + 1 * 1 / 8 * 1024 + 2 * 16) * MIB  # a 16 GiB GPU: no 10 GiB floor
    return persistent, activations + logits + kernel, sync, static, dynamic, TINY_PARAMS * 2


def test_tiny_terms_by_hand():
    m = tiny()
    persistent, transient, sync, static, dynamic, _ = tiny_expected()
    assert m.params_total == TINY_PARAMS
    assert m.weights + m.grads + m.optimizer + m.overhead == pytest.approx(persistent)
    assert m.activations == pytest.approx(2 * 256 * 64 * 17)
    assert m.logits == pytest.approx(256 * 500 * 2)
    assert m.term("log-prob kernel") == pytest.approx(256 * 80)
    assert m.training == pytest.approx(persistent + transient)
    assert m.term("weight sync") == pytest.approx(sync)
    assert (m.term("SGLang static"), m.term("SGLang dynamic")) == pytest.approx((static, dynamic))


def test_tiny_phases_with_and_without_release():
    persistent, transient, sync, static, dynamic, sg_weights = tiny_expected()
    kept = tiny()
    together = persistent + max(transient, sync) + static + dynamic
    assert [(p.name, p.bytes) for p in kept.phases] == [
        (n, pytest.approx(together)) for n in ("generate", "train", "sync")
    ]
    released = tiny(release=True)
    assert {p.name: p.bytes for p in released.phases} == pytest.approx(
        {
            "generate": persistent + static + dynamic,
            "train": persistent + transient + dynamic,
            "sync": persistent + sync + sg_weights + dynamic,
        }
    )
    assert released.total == pytest.approx(max(persistent + static + dynamic, persistent + sync + sg_weights + dynamic))
    # steps without a sync keep SGLang's weights during the train step
    sparse = tiny("rollout.sync_every=2", release=True)
    assert {p.name: p.bytes for p in sparse.phases}["train"] == pytest.approx(
        persistent + transient + dynamic + sg_weights
    )


def test_padded_rows_recompute_and_an_fp32_model():
    # unpacked: every row pads to prompt + response, here min(64 + max(64, 96), 256) = 160 tokens
    m = tiny("train.pack_sequences=false", "megatron.recompute_granularity=full", "model.dtype=fp32")
    t = 2 * 160
    assert m.activations == pytest.approx(2 * t * 64 * 2 / 2 + t * 64 * 34 / 2)  # inputs (/ TP: SP) + one layer
    assert m.logits == pytest.approx(t * 500 * 4)
    assert m.weights == pytest.approx(TINY_PARAMS / 2 * 4) and m.optimizer == pytest.approx(TINY_PARAMS / 2 * 8 / 2)
    assert "2 row(s) padded to 160" in next(x.assumption for x in m.terms if x.name == "activations")


def test_a_step_smaller_than_a_micro_batch_is_estimated_at_its_own_rows():
    # 2 prompts x 8 samples, no expert rows: 16 rows over DP 2 = one micro-batch of 8 rows, not 64
    small = ["train.pack_sequences=false", "train.micro_batch_size=64", "rollout.prompts_per_step=2"]
    m = tiny(*small, "rollout.samples_per_prompt=8", "algorithm.expert_data_ratio=0")
    t = 8 * 160
    assert m.activations == pytest.approx(2 * t * 64 * 34 / 2)
    assert "8 row(s) padded to 160" in next(x.assumption for x in m.terms if x.name == "activations")


def test_sglang_defaults_follow_the_gpu_size():
    h100 = 79.6 * GIB
    dynamic, text = sglang_dynamic({"tp_size": 2}, h100)
    assert dynamic == pytest.approx((512 + 8192 * 1.5 + 2 / 8 * 1024 + 2 * 256) * MIB)
    assert "8192 prefill tokens" in text and "at least 10 GiB" in text
    small, _ = sglang_dynamic({"tp_size": 1, "chunked_prefill_size": 2048, "disable_cuda_graph": True}, h100)
    assert small == pytest.approx(10 * GIB)  # the floor on GPUs over 60 GiB
    static, text = sglang_static({"tp_size": 2}, h100)  # unset: SGLang keeps only its reserve free
    assert static == pytest.approx(round((h100 - dynamic) / h100, 3) * h100) and "unset" in text


def qwen_1x8_expected():
    """GPU 0 of configs/paper/qwen2.5-7b-math-chord-mu-1x8.yaml: TP 2 (sequence parallel), DP 4,
    one packed row of 1024 + 16384 = 17408 tokens, full recompute, 4 SGLang servers (TP 2, 0.3)."""
    params = 7_615_616_512  # Qwen2.5-7B on Hugging Face
    P = params / 2
    persistent = P * 2 + P * 4 + P * 12 / 4 + 3 * GIB
    t, h, v_local = 17408, 3584, 152064 / 2
    activations = 28 * t * h * 2 / 2 + t * h * 34 / 2
    transient = activations + t * v_local * 2 + t * 20 * 4
    sync = 2 * 152064 * 3584 * 2  # the embedding / output matrix outgrows a 512 MiB bucket
    static = 0.3 * 79.6 * GIB
    dynamic = (512 + 8192 * 1.5 + 2 / 8 * 1024 + 2 * 256) * MIB
    return persistent, transient, sync, static, dynamic, params * 2 / 2


def test_qwen_1x8_paper_config_fits_with_a_stated_margin():
    from chord_megatron.commands.launch import plan as lp

    cfg = load_config(QWEN_1X8)
    assert cfg.rollout.release_sglang_memory and cfg.sglang["enable_memory_saver"] is True
    m = lp.plan_launch(cfg, nodes=1, gpus_per_node=8, mode="colocated").memory
    persistent, transient, sync, static, dynamic, sg_weights = qwen_1x8_expected()
    assert m.training == pytest.approx(persistent + transient)
    assert {p.name: p.bytes for p in m.phases} == pytest.approx(
        {
            "generate": persistent + static + dynamic,
            "train": persistent + transient + dynamic,
            "sync": persistent + sync + sg_weights + dynamic,
        }
    )
    assert m.peak.name == "generate"
    assert m.margin == pytest.approx(79.6 * GIB - (persistent + static + dynamic))
    assert 7.5 * GIB < m.margin < 7.7 * GIB  # the config's header states 7.6 GiB
    # without the release the trainer's step and SGLang's whole pool meet: 2.5 GiB left
    kept = lp.plan_launch(cfg.replace(**{"rollout.release_sglang_memory": "false"}), nodes=1, mode="colocated").memory
    assert kept.margin == pytest.approx(79.6 * GIB - (persistent + max(transient, sync) + static + dynamic))
    assert 2.4 * GIB < kept.margin < 2.6 * GIB


def test_plan_prints_every_term_with_its_assumption(capsys):
    rc = main(["launch", "plan", str(QWEN_1X8), "--nodes", "1", "--mode", "colocated"])
    out = capsys.readouterr().out
    assert rc == 0
    persistent, transient, sync, static, dynamic, _ = qwen_1x8_expected()
    assert "peak 72.0 GiB (generate) of 79.6 GiB, margin 7.6 GiB" in out
    table = out.split("  term ")[1].split("  phase ")[0]  # the term rows, in order
    lines = {line.split()[0]: line for line in table.splitlines()[1:]}
    expect = {
        "weights": ("7.1", "3.81B params (largest pipeline stage / TP 2) x 2 bytes (bf16)"),
        "grads": ("14.2", "fp32 main-grad buffer"),
        "optimizer": ("10.6", "/ 4 (distributed optimizer over DP 4 x CP 1)"),
        "overhead": ("3.0", "CUDA context"),
        "activations": ("2.6", "(sequence parallel: / TP 2) + one layer's; t = 1 packed row(s) of 17408 tokens / CP 1"),
        "logits": ("2.5", "no fp32 copy, which would add 4.9 GiB"),
        "log-prob": ("0.0", "fused kernel: 20 fp32 per token"),
    }
    for name, (gib, assumption) in expect.items():
        line = lines[name]
        assert f" {gib} " in line and assumption in line, line
    assert "SGLang static      23.9  sglang.mem_fraction_static 0.3" in out
    assert "SGLang dynamic     13.2  SGLang 0.5.23's own reserve: 512 MiB + 1.5 MiB x 8192 prefill tokens" in out
    assert "weight sync         2.0  rank 0: 2 buckets in flight" in out
    assert f"generate           {(persistent + static + dynamic) / GIB:.1f}  trainer persistent (cache emptied)" in out
    assert "(KV cache and weights released)" in out
