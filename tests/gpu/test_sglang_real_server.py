"""The loop against a real SGLang server (needs a GPU and a full `sglang[all]==0.5.23` install).

Starts one SGLang server from the config's `sglang:` section on a tiny model folder written
here, runs a few CHORD steps with rollouts from it, and relies on the loop's own verification
(rollout.verify_every=1, probe_every=1): after every weight sync the served log-probs of a probe batch must
equal the trainer's, or the run stops. Skipped, and reported as skipped, without a GPU.
"""

import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_chord_train_with_a_real_sglang_server(tmp_path):
    pytest.importorskip("sglang.srt.entrypoints.http_server", reason="needs a full SGLang install")
    from chord_megatron.config import load_config
    from chord_megatron.rollout.inprocess import build_hf_model

    cfg = load_config(ROOT / "configs/demo.yaml")
    model_dir = tmp_path / "tiny-model"
    build_hf_model(cfg.model, seed=0, eos_token_id=2).save_pretrained(model_dir)
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "chord_megatron.cli",
        "train",
        str(ROOT / "configs/demo.yaml"),
        "rollout.engine=sglang",
        f"sglang.model_path={model_dir}",
        "sglang.skip_tokenizer_init=true",
        "sglang.mem_fraction_static=0.3",
        "rollout.weight_sync=tensor",
        "rollout.verify_every=1",
        "rollout.probe_every=1",  # a probe batch after every sync, as well as the training forward's check
        "rollout.verify_tolerance=1e-2",  # token-mean KL, bf16 serving vs the fp32 trainer
        "base.steps=20",
        "train.steps=3",
        "train.eval_every=3",
        "data.arith_eval_prompts=16",
        f"train.output_dir={run}",
        "--no-progress",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-4000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss/total" in r]
    assert len(steps) == 3
    assert all(r["sync/verify_kl"] <= 1e-2 for r in steps if "sync/verify_kl" in r)
    assert all(r["mismatch/max"] < 0.1 for r in steps if "mismatch/max" in r)
