"""Ahead-of-time compilation of both kernels for an H100 (sm_90) on this CPU-only machine.

Catches lowering errors that the interpreter cannot see (IR type errors, unsupported ops,
register spills, loads that lost their 128-bit vectorisation, a pipelining depth that did not
take). It runs in a subprocess because the test session has TRITON_INTERPRET=1 set
(conftest.py), under which @triton.jit yields interpreter objects that cannot be compiled.

Two Triton versions: the project pins 3.7.1 (this venv); the GPU machine we are lent has 3.6.0,
which is installed once into a cache folder and put first on PYTHONPATH for the subprocess.
"""

import json
import os
import subprocess
import sys

import pytest

from chord_kernels.launch import SWEEP_GRID

GPU_BOX_TRITON = "3.6.0"
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "chord-kernels")


def _aot(*args, pythonpath=None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, "-m", "chord_kernels.aot", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _triton_dir(version: str) -> str:
    """A folder holding only triton==version, installed on first use and then reused.

    A failed install fails the test (the version check is the point of the test, so no skip).
    Installed into a temporary sibling and renamed, so an interrupted install leaves no
    half-filled folder behind and concurrent runs do not see one.
    """
    final = os.path.join(CACHE, f"triton-{version}")
    if os.path.isdir(final):
        return final
    os.makedirs(CACHE, exist_ok=True)
    tmp = f"{final}.tmp{os.getpid()}"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", tmp, f"triton=={version}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"pip could not install triton=={version}:\n{proc.stderr[-3000:]}"
    try:
        os.rename(tmp, final)
    except OSError:  # another run finished first; use its copy
        subprocess.run(["rm", "-rf", tmp], check=False)
    return final


def _check_sm90(r):
    assert r["ptx_target"].startswith("sm_90"), r
    assert r["ptx_bytes"] > 1000, r
    assert r["cubin_bytes"] > 1000, f"no cubin (is Triton's bundled ptxas missing?): {r}"
    # Bandwidth needs 128-bit accesses on the streaming loop (for shards whose width is a
    # multiple of 16, as the JIT specialises them): 16-byte cp.async copies when pipelined,
    # ld.global.v4 otherwise. The one allowed scalar 16-bit load is the forward's single
    # target-logit gather.
    stages = r["launch"]["num_stages"]
    if stages > 1:
        assert r["cp_async16"] > 0, f"num_stages={stages} but the tile loads are not pipelined: {r}"
        # k stages keep k - 1 tiles in flight in shared memory.
        tile_bytes = r["launch"]["rows_per_program"] * r["launch"]["block_v"] * (2 if r["dtype"] == "bf16" else 4)
        assert r["shared_bytes"] >= (stages - 1) * tile_bytes, r
    else:
        assert r["cp_async16"] == 0 and r["ld_v4"] > 0, f"logits loads are not vectorised: {r}"
    assert r["ld_scalar16"] <= (1 if r["kernel"] == "logprob_fwd_kernel" else 0), r
    if r["kernel"] == "logprob_bwd_kernel":
        assert r["st_v4"] > 0 and r["st_scalar16"] == 0, f"gradient stores are not vectorised: {r}"
    # A streaming kernel should never spill.
    assert r["local_bytes"] == 0, f"register spills: {r}"
    assert r["registers"] <= 255, r


def test_sm90_cubin_for_fwd_and_bwd_fp32_bf16():
    results = _aot("--arch", "90", "--dtypes", "fp32,bf16")
    got = {(r["kernel"], r["dtype"]) for r in results}
    assert got == {(k, d) for k in ("logprob_fwd_kernel", "logprob_bwd_kernel") for d in ("fp32", "bf16")}
    for r in results:
        _check_sm90(r)


def test_sm90_unaligned_shard_with_both_knobs():
    """A shard width that is not a multiple of 16 (the GPU parity test's V = 50257) gets a more
    general specialisation: it must lower too, pipelined and per-lane, without spills. Its loads
    are scalar, and bf16 ones cannot use cp.async (4-byte minimum), so only fp32 is pipelined."""
    results = _aot("--dtypes", "fp32,bf16", "--unaligned", "--launch", '{"num_stages": 3, "lane_accumulators": true}')
    assert len(results) == 4
    for r in results:
        assert not r["aligned"] and r["cubin_bytes"] > 1000, r
        assert r["local_bytes"] == 0 and r["registers"] <= 255, r
        assert r["ld_v4"] == 0, r  # nothing to vectorise without the divisibility hints
    # fp32: two 4096-wide fp32 tiles in flight (4-byte cp.async) for three stages.
    assert all(r["shared_bytes"] >= 2 * 4096 * 4 for r in results if r["dtype"] == "fp32"), results


def _check_sweep_grid(results, version):
    assert {r["triton"] for r in results} == {version}
    want = [(c.as_dict(), k) for c in SWEEP_GRID for k in ("logprob_fwd_kernel", "logprob_bwd_kernel")]
    assert [(r["launch"], r["kernel"]) for r in results] == want
    for r in results:
        _check_sm90(r)


def test_sm90_sweep_grid_compiles_without_spills():
    """Every configuration the GPU sweep times lowers, vectorises, pipelines and does not spill."""
    import triton

    _check_sweep_grid(_aot("--dtypes", "bf16", "--sweep-grid"), triton.__version__)


@pytest.mark.slow  # first run downloads and unpacks a ~190 MB wheel; later runs reuse it
def test_sm90_sweep_grid_with_gpu_box_triton():
    """The same checks under the Triton of the GPU machine (3.6.0), not only the pinned 3.7.1."""
    path = _triton_dir(GPU_BOX_TRITON)
    _check_sweep_grid(_aot("--dtypes", "bf16", "--sweep-grid", pythonpath=path), GPU_BOX_TRITON)
