"""Ahead-of-time compilation of the log-prob kernels for a GPU target, on any machine.

Lowering to PTX and assembling a cubin (Triton bundles ptxas) needs no GPU, so this catches
errors the CPU interpreter cannot: type mismatches in the IR, unsupported ops, register-size
problems. Run as `python -m chord_kernels.aot [--arch 90] [--launch JSON | --sweep-grid]`; it
prints one JSON line per compiled kernel.

Works with Triton 3.6 and 3.7 alike (the test compiles with both). Between 3.6.0 and 3.7.1 the
APIs used here -- ASTSource(fn, signature, constexprs, attrs) with name-keyed constexprs and
{(arg index,): [["tt.divisibility", 16]]} attrs, GPUTarget("cuda", arch, 32), the num_warps /
num_stages options, compiled.asm["ptx"/"cubin"], metadata.shared, the bundled cuobjdump -- are
unchanged. What differs is below this API: 3.7 passes --regAllocOptLevel=2 to ptxas (a ptxas 13
workaround) and lets LLVM emit PTX up to ISA 9.0 (3.6: 8.6), so register counts may differ by
version; the test's limits (no spills, <= 255 registers) hold for both.

TRITON_INTERPRET must be unset in the process that imports the kernels: under the interpreter
@triton.jit returns an InterpretedFunction, which has no compiler front end. The test runs this
module in a subprocess with the variable removed for that reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, Iterator, Optional, Tuple

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .launch import SWEEP_GRID, LaunchConfig, default_launch

_TORCH_TO_TRITON = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16"}


# The specialisation Triton's JIT applies on its own to a contiguous shard whose width is a
# multiple of 16 (true for Megatron, which pads the vocabulary to a multiple of 128 x TP):
# column strides equal to 1 become constants, and pointers, row strides and V_local carry a
# divisible-by-16 hint. Without these hints the loads stay scalar 16-bit ones.
_UNIT_STRIDES = {"logprob_fwd_kernel": ("stride_xv",), "logprob_bwd_kernel": ("stride_xv", "stride_gv")}
_DIVISIBLE_BY_16 = ("stride_xn", "stride_gn", "v_local")


def _signatures(dtype: str) -> Iterator[Tuple[str, Dict[str, str]]]:
    """(kernel name, {arg: type}) for both kernels with `dtype` logits, int64 targets."""
    ptr = _TORCH_TO_TRITON[dtype]
    scalars = {"n_rows": "i32", "v_local": "i32", "vocab_start": "i32", "inv_temp": "fp32"}
    yield (
        "logprob_fwd_kernel",
        {
            "x_ptr": ptr,
            "stride_xn": "i64",
            "stride_xv": "i32",
            "tgt_ptr": "*i64",
            "part_ptr": "*fp32",
            **scalars,
        },
    )
    yield (
        "logprob_bwd_kernel",
        {
            "x_ptr": ptr,
            "stride_xn": "i64",
            "stride_xv": "i32",
            "gx_ptr": ptr,
            "stride_gn": "i64",
            "stride_gv": "i32",
            "tgt_ptr": "*i64",
            "stats_ptr": "*fp32",
            **scalars,
        },
    )


def _memory_ops(ptx: str) -> dict:
    """Counts of 128-bit vector and scalar 16-bit global loads/stores in the PTX.

    With num_stages > 1 the tile loads become 16-byte cp.async copies into shared memory.
    """
    return {
        "cp_async16": len(re.findall(r"cp\.async\.c[ag]\.shared\.global[^;]*, (?:0x10|16)\b", ptx)),
        "ld_v4": len(re.findall(r"ld\.global[.\w]*\.v4\.", ptx)),
        "st_v4": len(re.findall(r"st\.global[.\w]*\.v4\.", ptx)),
        "ld_scalar16": len(re.findall(r"ld\.global[.\w]*\.b16 ", ptx)),
        "st_scalar16": len(re.findall(r"st\.global[.\w]*\.b16 ", ptx)),
    }


def _resource_usage(cubin) -> dict:
    """Registers and local-memory bytes (register spills) per thread, read with Triton's cuobjdump.

    Returns {} when the cubin or the tool is missing (Triton wheels bundle it for NVIDIA).
    """
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not cubin or not os.path.exists(tool):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    found = dict(re.findall(r"\b(REG|LOCAL|STACK):(\d+)", text))
    return {"registers": int(found["REG"]), "local_bytes": int(found["LOCAL"])} if "REG" in found else {}


def compile_kernels(
    arch: int = 90,
    dtypes=("fp32", "bf16"),
    launch: Optional[LaunchConfig] = None,
    with_entropy: bool = True,
    aligned: bool = True,
) -> Iterator[dict]:
    """Compile every kernel x dtype for CUDA sm_<arch>; yields a summary dict per compilation.

    launch=None takes the GPU defaults the runtime uses for a large vocabulary. aligned=False
    compiles what the JIT builds for a shard whose width or row stride is not a multiple of 16
    (e.g. V = 50257 in the GPU test): runtime strides, no divisibility hints except on pointers.
    """
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("unset TRITON_INTERPRET before importing the kernels for AOT compilation")
    from . import triton_logprobs

    launch = launch or default_launch(1 << 20, interpreted=False)
    target = GPUTarget("cuda", arch, 32)
    consts = {
        "ROWS": launch.rows_per_program,
        "BLOCK_V": launch.block_v,
        "WITH_ENTROPY": with_entropy,
        "NUM_STAGES": launch.num_stages,
    }
    options = {"num_warps": launch.num_warps, "num_stages": launch.num_stages}
    for dtype in dtypes:
        for name, sig in _signatures(dtype):
            fn = getattr(triton_logprobs, name)
            kconsts = dict(consts, **{k: 1 for k in _UNIT_STRIDES[name] if aligned})
            if name == "logprob_fwd_kernel":
                kconsts["LANE_ACC"] = launch.lane_accumulators
            signature = dict(sig, **{k: "constexpr" for k in kconsts})
            hinted = [k for k, ty in signature.items() if ty.startswith("*") or (aligned and k in _DIVISIBLE_BY_16)]
            attrs = {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k in hinted}
            src = ASTSource(fn=fn, signature=signature, constexprs=kconsts, attrs=attrs)
            compiled = triton.compile(src, target=target, options=options)
            asm = compiled.asm
            yield {
                **_resource_usage(asm.get("cubin")),
                **_memory_ops(asm.get("ptx", "")),
                "kernel": name,
                "dtype": dtype,
                "arch": arch,
                "ptx_bytes": len(asm.get("ptx", "")),
                "cubin_bytes": len(asm.get("cubin", b"")),
                "ptx_target": next(
                    (ln.split()[1] for ln in asm.get("ptx", "").splitlines() if ln.startswith(".target")), None
                ),
                "shared_bytes": compiled.metadata.shared,
                "launch": launch.as_dict(),
                "aligned": aligned,
                "triton": triton.__version__,
            }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (H100: 90)")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument(
        "--launch",
        default="{}",
        help='JSON overrides of the GPU default LaunchConfig, e.g. {"block_v": 2048, "lane_accumulators": true}',
    )
    parser.add_argument("--sweep-grid", action="store_true", help="compile every launch.SWEEP_GRID entry instead")
    parser.add_argument("--unaligned", action="store_true", help="V_local / row stride not a multiple of 16")
    args = parser.parse_args(argv)
    launches = (
        SWEEP_GRID
        if args.sweep_grid
        else [dataclasses.replace(default_launch(1 << 20, interpreted=False), **json.loads(args.launch))]
    )
    for launch in launches:
        for info in compile_kernels(args.arch, tuple(args.dtypes.split(",")), launch, aligned=not args.unaligned):
            print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
