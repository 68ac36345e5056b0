"""The GPU acceptance run's engine steps (scripts/gpu_acceptance/engine_smoke.py, hf_parity.py),
dry-run on the CPU so that they cannot rot between the rare GPU runs.

Each script runs as the runner starts it: a subprocess from the repository root with
PYTHONPATH=<repo>:<repo>/kernels and nothing installed beyond what the GPU machine has.
Packages that machine lacks (psutil, tensorboard, math_verify, msgspec, sglang, matplotlib,
transformer-engine, apex) are hidden by a sitecustomize, so an import of one of them, or a
code path that needs one (dist-checkpointing's psutil), fails here first.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MISSING_ON_GPU_HOST = (
    "psutil",
    "tensorboard",
    "math_verify",
    "msgspec",
    "sglang",
    "matplotlib",
    "transformer_engine",
    "apex",
)
HIDE = """
import importlib.abc, importlib.util, sys
HIDDEN = set({names!r})
class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden)", name=name)
sys.meta_path.insert(0, _Hide())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if name.split(".")[0] in HIDDEN else _find_spec(name, package)
"""


def _run(tmp_path, argv, hidden=MISSING_ON_GPU_HOST, **env):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDE.format(names=tuple(hidden)))
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT), str(ROOT / "kernels")]), **env)
    proc = subprocess.run(
        [sys.executable, *argv, "--out", str(tmp_path / "out")],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    return proc, tmp_path / "out"


def _result(proc, out, name):
    path = out / f"{name}.json"
    assert path.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(path.read_text())


def test_engine_smoke_dry_run_passes_every_check(tmp_path):
    proc, out = _run(tmp_path, ["scripts/gpu_acceptance/engine_smoke.py", "--dry-run"])  # as a file
    res = _result(proc, out, "engine_smoke")
    assert (res["status"], proc.returncode) == ("pass", 0), json.dumps(res, indent=1)[-4000:]
    checks = res["checks"]
    assert set(checks) == {
        "build",
        "finite_steps",
        "logits_dtype_at_kernel",
        "packed_equals_plain",
        "resume_equals_uninterrupted",
        "peak_memory",
    }
    assert all(c["ok"] for c in checks.values())
    b = checks["build"]
    assert (b["layer_spec"], b["backend"], b["optimizer"], b["param_dtypes"]) == (
        "local",
        "gloo",
        ["DistributedOptimizer"],
        ["torch.bfloat16"],
    )
    assert checks["logits_dtype_at_kernel"]["dtypes"] == ["bfloat16"] and checks["logits_dtype_at_kernel"]["calls"] >= 6
    steps = checks["finite_steps"]
    assert len(steps["loss"]) == 3 and all(g > 0 for g in steps["grad_norm"])
    packed = checks["packed_equals_plain"]
    assert packed["micro_batches"] < packed["micro_batches_plain"] and packed["grads_rel_l2"] < 5e-2
    resume = checks["resume_equals_uninterrupted"]
    assert resume["bit_exact"] and resume["loaded_step"] == 2  # the CPU is deterministic
    assert not (out / "engine_smoke_ckpt").exists()  # the temporary checkpoint is cleaned up
    assert res["seconds"] < 120


def test_hf_parity_dry_run_passes_every_check(tmp_path):
    proc, out = _run(tmp_path, ["-m", "scripts.gpu_acceptance.hf_parity", "--dry-run"])  # as the runner does
    res = _result(proc, out, "hf_parity")
    assert (res["status"], proc.returncode) == ("pass", 0), json.dumps(res, indent=1)[-4000:]
    checks = res["checks"]
    assert set(checks) == {
        "logprobs_fp32",
        "export_round_trip",
        "logprobs_bf16",
        "export_round_trip_bf16",
        "export_from_checkpoint",
    }
    assert all(c["ok"] for c in checks.values())
    assert checks["logprobs_fp32"]["gap_max"] < 1e-4 and checks["logprobs_fp32"]["ref_logp_std"] > 0.3
    bf16 = checks["logprobs_bf16"]
    assert 0 < bf16["gap_max"] <= bf16["allowed_max"]  # bf16 really ran: not a zero gap
    for name in ("export_round_trip", "export_round_trip_bf16", "export_from_checkpoint"):
        assert checks[name]["tensors"] == 27 and checks[name]["differing"] == []  # 2 layers x 11 + 5
    assert res["seconds"] < 60


@pytest.mark.parametrize("script", ["engine_smoke", "hf_parity"])
def test_without_a_gpu_or_megatron_the_steps_skip_with_the_reason(tmp_path, script):
    proc, out = _run(tmp_path, ["-m", f"scripts.gpu_acceptance.{script}"], CUDA_VISIBLE_DEVICES="")
    res = _result(proc, out, script)
    assert (res["status"], proc.returncode) == ("skip", 2) and "no CUDA GPU" in res["reason"]
    proc, out = _run(tmp_path, ["-m", f"scripts.gpu_acceptance.{script}", "--dry-run"], hidden=("megatron",))
    res = _result(proc, out, script)
    assert (res["status"], proc.returncode) == ("skip", 2) and "megatron-core is not importable" in res["reason"]
