"""Ahead-of-time compilation of both kernels for an H100 (sm_90) on this CPU-only machine.

Catches lowering errors that the interpreter cannot see (IR type errors, unsupported ops,
register spills, loads that lost their 128-bit vectorisation). It runs in a subprocess because the test session has TRITON_INTERPRET=1 set
(conftest.py), under which @triton.jit yields interpreter objects that cannot be compiled.
"""
import json
import os
import subprocess
import sys


def _aot(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "chord_kernels.aot", *args],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_sm90_cubin_for_fwd_and_bwd_fp32_bf16():
    results = _aot("--arch", "90", "--dtypes", "fp32,bf16")
    got = {(r["kernel"], r["dtype"]) for r in results}
    assert got == {(k, d) for k in ("logprob_fwd_kernel", "logprob_bwd_kernel") for d in ("fp32", "bf16")}
    for r in results:
        assert r["ptx_target"].startswith("sm_90"), r
        assert r["ptx_bytes"] > 1000, r
        assert r["cubin_bytes"] > 1000, f"no cubin (is Triton's bundled ptxas missing?): {r}"
        # Bandwidth needs 128-bit accesses on the streaming loop (for shards whose width is a
        # multiple of 16, as the JIT specialises them). The one allowed scalar 16-bit load is
        # the forward's single target-logit gather.
        assert r["ld_v4"] > 0, f"logits loads are not vectorised: {r}"
        assert r["ld_scalar16"] <= (1 if r["kernel"] == "logprob_fwd_kernel" else 0), r
        if r["kernel"] == "logprob_bwd_kernel":
            assert r["st_v4"] > 0 and r["st_scalar16"] == 0, f"gradient stores are not vectorised: {r}"
        # A streaming kernel should never spill at the default GPU launch configuration.
        if "local_bytes" in r:
            assert r["local_bytes"] == 0, f"register spills: {r}"
            assert r["registers"] <= 255, r


def test_sm90_multi_row_tiles_compile():
    """The upper end of the GPU rows-per-program range also lowers (bf16, backward included)."""
    results = _aot("--dtypes", "bf16", "--rows-per-program", "4", "--block-v", "2048")
    assert len(results) == 2 and all(r["cubin_bytes"] > 0 for r in results)
