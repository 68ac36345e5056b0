"""Step 1: what this machine is. Versions (torch, CUDA, driver, NCCL, triton, transformer-engine,
megatron-core, SGLang), the GPU's properties, and its copy bandwidth: the ceiling the kernel's
bandwidth fraction is read against.

`versions()` lives in chord_megatron/versions.py, which `chord doctor` also runs in the trainer's,
SGLang's and the router's environments; it needs only the standard library.
"""

from __future__ import annotations

from chord_megatron.versions import versions
from scripts.gpu_acceptance.report import StepReport


def copy_bandwidth(device, gib: float = 2.0) -> float:
    """Device-to-device copy, bytes read + written per second (median of 10 after warm-up)."""
    import torch

    n = int(gib * 2**30) // 4
    a = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    b = torch.empty_like(a)
    times = []
    for i in range(13):
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0.record()
        b.copy_(a)
        t1.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(t0.elapsed_time(t1) / 1e3)
    times.sort()
    return 2 * a.numel() * 4 / times[len(times) // 2]


def main():
    rep = StepReport("probe", __doc__.splitlines()[0])
    v = versions()
    rep.record("versions", True, **v)
    if not v.get("cuda_available"):
        if rep.dry_run:
            rep.finish("pass", "dry run: no CUDA here; versions recorded")
        rep.finish("fail", "torch.cuda.is_available() is False: " + str(v.get("nvidia_smi") or "no nvidia-smi"))
    import torch

    with rep.check("device"):
        p = torch.cuda.get_device_properties(0)
        rep.record(
            "device",
            True,
            name=p.name,
            capability=f"{p.major}.{p.minor}",
            sms=p.multi_processor_count,
            memory_gib=round(p.total_memory / 2**30, 1),
            count=torch.cuda.device_count(),
        )
    with rep.check("copy_bandwidth"):
        bw = copy_bandwidth("cuda")
        rep.record("copy_bandwidth", bw > 0, bytes_per_s=round(bw), tb_per_s=round(bw / 1e12, 2))
    rep.finish()


if __name__ == "__main__":
    main()
