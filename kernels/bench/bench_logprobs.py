"""Benchmark log p(target) + entropy implementations: time, peak memory, bandwidth; rows to a CSV.

    python kernels/bench/bench_logprobs.py                      # CPU default: N=4096, V=32768 fp32
    python kernels/bench/bench_logprobs.py --n 16384 --v 152064 --dtype bf16    # a GPU shape
    python kernels/bench/bench_logprobs.py --quick --csv /tmp/x.csv             # smoke test

Every (variant, pass) runs in its own subprocess, so that one variant's allocator caches cannot
hide another's memory use, and a crash (e.g. out of memory) only loses that row. Per worker:
a tiny warm-up shape, then one measured run for memory, then `--reps` timed runs; the logits are
restored from a pristine copy before each run, outside the timed region.

Passes: fwd (forward with autograd on, as in training), bwd (backward only, after an untimed
forward), fwd+bwd. The loss is sum(g1 * logp + g2 * entropy) with random g1, g2.

Peak memory is the extra memory above what was allocated when the timed region started:
  * CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats();
  * CPU: the process's peak resident set (VmHWM in /proc/self/status), reset just before the
    run by writing 5 to /proc/self/clear_refs, minus VmRSS at that moment. This counts pages
    actually touched, including the allocator's, which is what a training job pays for.
Bandwidth (CUDA): bytes = logits read once (fwd), read + gradient written (bwd), both (fwd+bwd),
divided by the p50 time, as a fraction of the device's peak HBM bandwidth.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from variants import VARIANTS, default_variants, unavailable_reason  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CSV = os.path.join(HERE, "results.csv")
PASSES = ("fwd", "bwd", "fwd+bwd")
PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}  # bytes/s, HBM (SXM parts)
CSV_FIELDS = [
    "date", "git_commit", "device", "threads", "torch", "triton", "n", "v", "dtype", "temperature",
    "variant", "pass", "p20_ms", "p50_ms", "p80_ms", "peak_extra_mb", "peak_extra_x_logits",
    "baseline", "speedup_vs_baseline", "mem_ratio_vs_baseline", "bandwidth_fraction", "note",
]  # fmt: skip


# ---- measurement, inside a worker process ---------------------------------------------------
def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class PeakMemory:
    """Extra peak memory (bytes) of the code run between start() and stop()."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def start(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.base = _proc_status_kb("VmRSS") * 1024

    def stop(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return _proc_status_kb("VmHWM") * 1024 - self.base


class Timer:
    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def start(self):
        if self.cuda:
            self.t0 = torch.cuda.Event(enable_timing=True)
            self.t1 = torch.cuda.Event(enable_timing=True)
            self.t0.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> float:
        """Milliseconds since start()."""
        if self.cuda:
            self.t1.record()
            torch.cuda.synchronize()
            return self.t0.elapsed_time(self.t1)
        return (time.perf_counter() - self.t0) * 1e3


def _make_inputs(n, v, dtype, device, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    logits = (torch.randn(n, v, generator=gen) * 2).to(device=device, dtype=dtype)
    targets = torch.randint(0, v, (n,), generator=gen).to(device)
    g1, g2 = torch.randn(n, generator=gen).to(device), torch.randn(n, generator=gen).to(device)
    return logits, targets, g1, g2


def _run_once(fn, x, pristine, targets, g1, g2, temperature, which, timer, mem=None):
    """Restore the logits, run one pass; returns elapsed ms (and fills mem when given)."""
    with torch.no_grad():
        x.copy_(pristine)
    x.grad = None
    if which == "bwd":
        logp, ent = fn(x, targets, temperature)
        loss = (g1 * logp).sum() + (g2 * ent).sum()
    (mem.start() if mem else None)
    timer.start()
    if which != "bwd":
        logp, ent = fn(x, targets, temperature)
    if which != "fwd":
        if which == "fwd+bwd":
            loss = (g1 * logp).sum() + (g2 * ent).sum()
        loss.backward()
    ms = timer.stop()
    peak = mem.stop() if mem else None
    del logp, ent
    x.grad = None
    return ms, peak


def worker(spec: dict) -> dict:
    device = spec["device"]
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    fn = VARIANTS[spec["variant"]].build()
    dtype = getattr(torch, spec["dtype"])
    timer = Timer(device)
    # Warm-up on a small shape: lazy imports, kernel compilation, thread pools.
    small = _make_inputs(64, min(spec["v"], 1024), dtype, device, seed=1)
    xs = small[0].clone().requires_grad_()
    _run_once(fn, xs, small[0], *small[1:], spec["temperature"], "fwd+bwd", timer)
    del xs, small

    pristine, targets, g1, g2 = _make_inputs(spec["n"], spec["v"], dtype, device)
    x = pristine.clone().requires_grad_()
    args = (fn, x, pristine, targets, g1, g2, spec["temperature"], spec["pass"], timer)
    _, peak = _run_once(*args, mem=PeakMemory(device))
    times = [_run_once(*args)[0] for _ in range(spec["reps"])]
    return {"times_ms": times, "peak_bytes": peak}


# ---- orchestration, in the parent process ---------------------------------------------------
def _quantile(xs, q):
    return float(torch.tensor(xs, dtype=torch.float64).quantile(q))


def _git_commit() -> str:
    try:  # read-only
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "no-commit"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {model} ({os.cpu_count()} cores)"


def _peak_bandwidth(device_name: str):
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key in device_name), None)


def _spawn_worker(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["exit code %d" % proc.returncode])[-1]}
    return json.loads(lines[-1])


def run(args) -> list:
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    variants = args.variants.split(",") if args.variants else default_variants(device)
    baseline = args.baseline or ("megatron_ce+entropy" if device == "cuda" else "naive")
    if baseline in variants:  # measure the baseline first so ratios can be printed as we go
        variants = [baseline] + [v for v in variants if v != baseline]
    passes = args.passes.split(",")
    device_name = _device_name(device)
    logits_bytes = args.n * args.v * torch.empty(0, dtype=getattr(torch, args.dtype)).element_size()
    bw_peak = _peak_bandwidth(device_name) if device == "cuda" else None
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    common = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "git_commit": _git_commit(),
        "device": device_name, "threads": args.threads or torch.get_num_threads(), "torch": torch.__version__,
        "triton": triton_version, "n": args.n, "v": args.v, "dtype": args.dtype, "temperature": args.temperature,
        "baseline": baseline,
    }  # fmt: skip
    print(f"{device_name} | N={args.n} V={args.v} {args.dtype} T={args.temperature} | logits {logits_bytes / 2**20:.0f} MiB"
          f" | baseline {baseline} | threads {common['threads']}")  # fmt: skip
    print(f"{'variant':22} {'pass':8} {'p20 ms':>9} {'p50 ms':>9} {'p80 ms':>9} {'speedup':>8} "
          f"{'extra MiB':>10} {'x logits':>9} {'mem ratio':>9} {'BW frac':>8}")  # fmt: skip
    rows, base = [], {}
    for variant in variants:
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        reason = unavailable_reason(variant, device)
        if reason:
            print(f"{variant:22} skipped: {reason}")
            continue
        for which in passes:
            spec = {"variant": variant, "pass": which, "n": args.n, "v": args.v, "dtype": args.dtype,
                    "temperature": args.temperature, "reps": args.reps, "device": device, "threads": args.threads}  # fmt: skip
            res = _spawn_worker(spec, args.timeout)
            if "error" in res:
                print(f"{variant:22} {which:8} failed: {res['error']}")
                continue
            t = res["times_ms"]
            p20, p50, p80 = (_quantile(t, q) for q in (0.2, 0.5, 0.8))
            peak_mb = res["peak_bytes"] / 2**20
            if variant == baseline:
                base[which] = (p50, peak_mb)
            b = base.get(which)
            bytes_moved = logits_bytes * {"fwd": 1, "bwd": 2, "fwd+bwd": 3}[which]
            row = dict(common, variant=variant, **{"pass": which}, p20_ms=round(p20, 3), p50_ms=round(p50, 3),
                       p80_ms=round(p80, 3), peak_extra_mb=round(peak_mb, 1),
                       peak_extra_x_logits=round(res["peak_bytes"] / logits_bytes, 3),
                       speedup_vs_baseline=round(b[0] / p50, 3) if b else "",
                       mem_ratio_vs_baseline=round(peak_mb / b[1], 3) if b and b[1] > 0 else "",
                       bandwidth_fraction=round(bytes_moved / (p50 / 1e3) / bw_peak, 3) if bw_peak else "",
                       note=VARIANTS[variant].note)  # fmt: skip
            rows.append(row)
            print(f"{variant:22} {which:8} {p20:9.1f} {p50:9.1f} {p80:9.1f} {row['speedup_vs_baseline']!s:>8} "
                  f"{peak_mb:10.1f} {row['peak_extra_x_logits']:9.3f} {row['mem_ratio_vs_baseline']!s:>9} "
                  f"{row['bandwidth_fraction']!s:>8}", flush=True)  # fmt: skip
    if args.csv and rows:
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows)
        print(f"appended {len(rows)} rows to {args.csv}")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4096, help="tokens")
    p.add_argument("--v", type=int, default=32768, help="vocabulary (TP=1)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--passes", default=",".join(PASSES))
    p.add_argument("--variants", default="", help=f"comma list; default: all for the device ({', '.join(VARIANTS)})")
    p.add_argument("--baseline", default="", help="default: megatron_ce+entropy on CUDA, naive on CPU")
    p.add_argument("--reps", type=int, default=None, help="timed runs per (variant, pass); default 5 CPU / 50 GPU")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--csv", default=DEFAULT_CSV, help="append rows here ('' to skip)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per worker")
    p.add_argument("--cpu", action="store_true", help="benchmark CPU paths even when a GPU is present")
    p.add_argument("--quick", action="store_true", help="small shape, 3 reps: a smoke test")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    if args.quick:
        args.n, args.v, args.reps = 256, 2048, args.reps or 3
    if args.reps is None:
        args.reps = 50 if torch.cuda.is_available() and not args.cpu else 5
    run(args)


if __name__ == "__main__":
    main()
