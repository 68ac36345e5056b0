"""Ahead-of-time compilation of the log-prob kernels for a GPU target, on any machine.

Lowering to PTX and assembling a cubin (Triton bundles ptxas) needs no GPU, so this catches
errors the CPU interpreter cannot: type mismatches in the IR, unsupported ops, register-size
problems. Run as `python -m chord_kernels.aot [--arch 90]`; it prints one JSON line per kernel.

TRITON_INTERPRET must be unset in the process that imports the kernels: under the interpreter
@triton.jit returns an InterpretedFunction, which has no compiler front end. The test runs this
module in a subprocess with the variable removed for that reason.
"""
from __future__ import annotations

import argparse
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
    yield "logprob_fwd_kernel", {
        "x_ptr": ptr, "stride_xn": "i64", "stride_xv": "i32", "tgt_ptr": "*i64", "part_ptr": "*fp32",
        **scalars,
    }  # fmt: skip
    yield "logprob_bwd_kernel", {
        "x_ptr": ptr, "stride_xn": "i64", "stride_xv": "i32", "gx_ptr": ptr, "stride_gn": "i64",
        "stride_gv": "i32", "tgt_ptr": "*i64", "stats_ptr": "*fp32", **scalars,
    }  # fmt: skip


def _memory_ops(ptx: str) -> dict:
    """Counts of 128-bit vector and scalar 16-bit global loads/stores in the PTX."""
    return {
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
    rows_per_program: Optional[int] = None,
    block_v: Optional[int] = None,
    num_warps: Optional[int] = None,
    with_entropy: bool = True,
) -> Iterator[dict]:
    """Compile every kernel x dtype for CUDA sm_<arch>; yields a summary dict per compilation.

    Launch parameters left as None take the GPU defaults the runtime uses for a large vocabulary.
    """
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("unset TRITON_INTERPRET before importing the kernels for AOT compilation")
    from . import triton_logprobs

    defaults = triton_logprobs.default_launch(1 << 20)
    rows_per_program = rows_per_program or defaults[0]
    block_v = block_v or defaults[1]
    num_warps = num_warps or defaults[2]
    target = GPUTarget("cuda", arch, 32)
    consts = {"ROWS": rows_per_program, "BLOCK_V": block_v, "WITH_ENTROPY": with_entropy}
    for dtype in dtypes:
        for name, sig in _signatures(dtype):
            fn = getattr(triton_logprobs, name)
            kconsts = dict(consts, **{k: 1 for k in _UNIT_STRIDES[name]})
            signature = dict(sig, **{k: "constexpr" for k in kconsts})
            hinted = [k for k, ty in signature.items() if ty.startswith("*") or k in _DIVISIBLE_BY_16]
            attrs = {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k in hinted}
            src = ASTSource(fn=fn, signature=signature, constexprs=kconsts, attrs=attrs)
            compiled = triton.compile(src, target=target, options={"num_warps": num_warps})
            asm = compiled.asm
            yield {
                **_resource_usage(asm.get("cubin")),
                **_memory_ops(asm.get("ptx", "")),
                "kernel": name,
                "dtype": dtype,
                "arch": arch,
                "ptx_bytes": len(asm.get("ptx", "")),
                "cubin_bytes": len(asm.get("cubin", b"")),
                "ptx_target": next((ln.split()[1] for ln in asm.get("ptx", "").splitlines() if ln.startswith(".target")), None),
                "shared_bytes": compiled.metadata.shared,
                "launch": [rows_per_program, block_v, num_warps],
            }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (H100: 90)")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--rows-per-program", type=int, default=None, help="default: the GPU runtime's")
    parser.add_argument("--block-v", type=int, default=None)
    parser.add_argument("--num-warps", type=int, default=None)
    args = parser.parse_args(argv)
    for info in compile_kernels(args.arch, tuple(args.dtypes.split(",")), args.rows_per_program, args.block_v, args.num_warps):
        print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
