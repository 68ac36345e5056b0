"""What the engine steps (engine_smoke, hf_parity) share: a Megatron world of one process, on the
GPU over NCCL or, with --dry-run, on the CPU over gloo with any GPU hidden -- the same code.

`prepare(dry_run)` must run before anything initialises CUDA; it returns a skip reason (or
None): no GPU without --dry-run, or no importable megatron-core.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(name: str, description: str, run, *, needs=()) -> None:
    """The life of an engine step: parse --out / --dry-run, skip with the reason when the GPU,
    megatron-core or a module of `needs` is missing, run(report) with whatever no check caught
    recorded as the check "script", tear the world down, write DIR/<name>.json and exit."""
    from scripts.gpu_acceptance.report import StepReport

    rep = StepReport(name, description)
    reason = prepare(rep.dry_run)
    for module in () if reason else needs:
        try:
            __import__(module)
        except Exception as e:  # noqa: BLE001
            reason = f"{module} is not importable: {type(e).__name__}: {e}"[:300]
            break
    if reason:
        rep.skip(reason)
    try:
        with rep.check("script"):
            run(rep)
    finally:
        shutdown()
    rep.finish()


def prepare(dry_run: bool):
    # The runner sets PYTHONPATH=<repo>:<repo>/kernels; a hand-started script may not have it.
    for path in (ROOT, ROOT / "kernels"):
        if str(path) not in sys.path:
            sys.path.append(str(path))
    if dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path even on a GPU host
    import torch

    if not dry_run and not torch.cuda.is_available():
        return "no CUDA GPU visible to torch (--dry-run runs the same code on the CPU)"
    try:
        import megatron.core  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means: nothing to test here
        return f"megatron-core is not importable: {type(e).__name__}: {e}"[:300]
    # A world of one rank; torch.distributed reads these when the engine joins it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    return None


def backend(dry_run: bool) -> str:
    return "gloo" if dry_run else "nccl"


def te_pytorch_error():
    """None when transformer-engine's layers are usable here, else why not (the engine's own test)."""
    from chord_megatron.train.model import transformer_engine_error

    return transformer_engine_error()


def peak_memory() -> dict:
    """torch's peak allocated / reserved GPU memory since the last reset (None on the CPU)."""
    import torch

    if not torch.cuda.is_available():
        return {"peak_allocated_bytes": None, "peak_reserved_bytes": None}
    return {
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
    }


def shutdown() -> None:
    try:
        from chord_megatron.train.parallel import destroy_parallel

        destroy_parallel()
    except Exception:  # noqa: BLE001 - the results are already recorded
        pass
