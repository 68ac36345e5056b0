"""Step 3b: the compiled kernel vocabulary-parallel: TP=2 as two processes sharing the one GPU.

NCCL refuses two ranks on one device, so the two ranks form a gloo group holding CUDA tensors:
the kernel's two all-reduces (MAX, then a packed SUM) go through gloo, everything else is the
compiled GPU path. Each rank keeps its shard (even and uneven splits) of the same logits and
must reproduce the one-process (TP=1) log-probs, entropies and gradient shard.
"""

from __future__ import annotations

import socket
from datetime import timedelta

from scripts.gpu_acceptance.report import StepReport

TEMPERATURE = 0.8


def _case(n, v, dtype, device):
    import torch

    gen = torch.Generator().manual_seed(1234)
    logits = (torch.randn(n, v, generator=gen) * 3).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    g1, g2 = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    return [t.to(device) for t in (logits, targets, g1, g2)]


def _fused(logits, targets, g1, g2, start, group):
    from chord_kernels import vocab_parallel_logprobs

    x = logits.clone().requires_grad_()
    logp, ent = vocab_parallel_logprobs(
        x, targets, vocab_start=start, temperature=TEMPERATURE, tp_group=group, impl="triton", inplace_backward=True
    )
    ((g1 * logp).sum() + (g2 * ent).sum()).backward()
    return logp.detach(), ent.detach(), x.grad


def _worker(rank, world, port, n, v, splits, device, queue):
    import torch
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    out = {}
    try:
        for dtype in (torch.float32, torch.bfloat16):
            logits, targets, g1, g2 = _case(n, v, dtype, device)
            tp1 = _fused(logits, targets, g1, g2, 0, None)
            for split, bounds in splits.items():
                start, stop = bounds[rank], bounds[rank + 1]
                logp, ent, grad = _fused(logits[:, start:stop].contiguous(), targets, g1, g2, start, dist.group.WORLD)
                want = tp1[2][:, start:stop].double()
                out[f"{str(dtype).removeprefix('torch.')}_{split}"] = {
                    "logp_max_abs": float((logp - tp1[0]).abs().max()),
                    "entropy_max_abs": float((ent - tp1[1]).abs().max()),
                    "grad_rel_err": float((grad.double() - want).norm() / want.norm()),
                }
        queue.put((rank, out))
    except Exception as e:  # noqa: BLE001 - reported by the parent as this check's failure
        queue.put((rank, {"error": f"{type(e).__name__}: {e}"}))
    finally:
        dist.destroy_process_group()


def main():
    rep = StepReport("kernel_tp2", __doc__.splitlines()[0])
    import torch
    import torch.multiprocessing as mp

    if rep.dry_run:
        device, n, v = "cpu", 32, 1000  # TRITON_INTERPRET=1 from the runner
    elif not torch.cuda.is_available():
        rep.skip("no CUDA")
    else:
        device, n, v = "cuda", 4096, 152064
    half = v // 2
    uneven = (v * 5 // 11) // 16 * 16  # still a multiple of 16 on the GPU shape (vector loads)
    splits = {"even": [0, half, v], "uneven": [0, uneven, v]}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with rep.check("tp2_vs_tp1"):
        procs = [ctx.Process(target=_worker, args=(r, 2, port, n, v, splits, device, queue)) for r in range(2)]
        for p in procs:
            p.start()
        results = dict(queue.get(timeout=240) for _ in procs)
        for p in procs:
            p.join(timeout=60)
        for rank, res in sorted(results.items()):
            if "error" in res:
                rep.record(f"rank{rank}", False, error=res["error"])
                continue
            for case, nums in res.items():
                tol = 1e-5 if case.startswith("float32") else 1e-2
                ok = nums["logp_max_abs"] < 1e-4 and nums["entropy_max_abs"] < 1e-4 and nums["grad_rel_err"] < tol
                rep.record(f"rank{rank}_{case}", ok, **nums)
    rep.finish()


if __name__ == "__main__":
    main()
