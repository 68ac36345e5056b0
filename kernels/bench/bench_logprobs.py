"""Benchmark log p(target) + entropy implementations: time, peak memory, bandwidth; rows to a CSV.

    python kernels/bench/bench_logprobs.py                      # CPU default: N=4096, V=32768 fp32
    python kernels/bench/bench_logprobs.py --n 16384 --v 152064 --dtype bfloat16   # a GPU shape
    python kernels/bench/bench_logprobs.py --quick --csv /tmp/x.csv             # smoke test
    python kernels/bench/bench_logprobs.py --sweep --n 16384 --v 152064 --dtype bfloat16 --budget-s 150

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

--sweep times triton_inplace over launch configurations (sweep.py) instead: one worker process
per configuration runs fwd, bwd and fwd+bwd in turn (worker start-up dominates at a GPU shape,
and CUDA peak memory is per pass regardless), plus Megatron CE + entropy when megatron-core is
importable and naive. It prints a table sorted by fwd+bwd time, the default configuration's
ratio to each baseline, and the fastest configuration as one JSON line; CSV rows carry the
configuration in `note`. On CPU the peak-RSS figures of a worker's later passes are understated.
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
from typing import Optional

import torch

# This checkout's chord_kernels (kernels/) and the bench modules, also where nothing is installed
# (the GPU machine runs a bare copy of the tree).
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from variants import VARIANTS, default_variants, unavailable_reason  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CSV = os.path.join(HERE, "results.csv")
PASSES = ("fwd", "bwd", "fwd+bwd")
PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}  # bytes/s, HBM (SXM parts)
CSV_FIELDS = [
    "date",
    "git_commit",
    "device",
    "threads",
    "torch",
    "triton",
    "n",
    "v",
    "dtype",
    "temperature",
    "variant",
    "pass",
    "p20_ms",
    "p50_ms",
    "p80_ms",
    "peak_extra_mb",
    "peak_extra_x_logits",
    "baseline",
    "speedup_vs_baseline",
    "mem_ratio_vs_baseline",
    "bandwidth_fraction",
    "note",
]


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
    # Drawn on the device: at N=16384, V=152064 a CPU draw takes tens of seconds per worker.
    gen = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(n, v, generator=gen, device=device).mul_(2).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen, device=device)
    g1, g2 = (torch.randn(n, generator=gen, device=device) for _ in range(2))
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


# A launch configuration that computes garbage fast must not win the sweep. Limits far above
# honest rounding (fp32 math on bf16 inputs: ~1e-5 on logp and entropy, one bf16 ulp on the
# gradient) and far below any real error.
CHECK_ROWS = 64
CHECK_LIMITS = {"logp_abs": 1e-3, "entropy_abs": 1e-3, "grad_rel": 1e-2}


def check_vs_naive(fn, pristine, targets, g1, g2, temperature) -> dict:
    """Largest errors of fn against the naive torch code on the first CHECK_ROWS rows (full
    vocabulary, so every tile and the ragged last one are exercised), and whether they pass."""
    got = []
    for f in (fn, VARIANTS["naive"].build()):
        x = pristine[:CHECK_ROWS].clone().requires_grad_()
        logp, ent = f(x, targets[:CHECK_ROWS], temperature)
        ((g1[:CHECK_ROWS] * logp).sum() + (g2[:CHECK_ROWS] * ent).sum()).backward()
        got.append((logp.detach().float(), ent.detach().float(), x.grad.float()))
    (lp, h, g), (lp_ref, h_ref, g_ref) = got
    err = {
        "logp_abs": float((lp - lp_ref).abs().max()),
        "entropy_abs": float((h - h_ref).abs().max()),
        "grad_rel": float((g - g_ref).abs().max() / g_ref.abs().max()),
    }
    return dict(err, ok=all(err[k] <= limit for k, limit in CHECK_LIMITS.items()))


def worker(spec: dict) -> dict:
    """Times spec["passes"] in order in this process; returns {pass: {times_ms, peak_bytes}}
    (plus "check": check_vs_naive's result when spec["check"])."""
    device = spec["device"]
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    fn = VARIANTS[spec["variant"]].build(**({"launch": spec["launch"]} if spec.get("launch") else {}))
    dtype = getattr(torch, spec["dtype"])
    timer = Timer(device)
    # Warm-up on a small shape: lazy imports, kernel compilation, thread pools.
    small = _make_inputs(64, min(spec["v"], 1024), dtype, device, seed=1)
    xs = small[0].clone().requires_grad_()
    _run_once(fn, xs, small[0], *small[1:], spec["temperature"], "fwd+bwd", timer)
    del xs, small

    pristine, targets, g1, g2 = _make_inputs(spec["n"], spec["v"], dtype, device)
    out = {"check": check_vs_naive(fn, pristine, targets, g1, g2, spec["temperature"])} if spec.get("check") else {}
    x = pristine.clone().requires_grad_()
    for which in spec["passes"]:
        args = (fn, x, pristine, targets, g1, g2, spec["temperature"], which, timer)
        _, peak = _run_once(*args, mem=PeakMemory(device))
        out[which] = {"times_ms": [_run_once(*args)[0] for _ in range(spec["reps"])], "peak_bytes": peak}
    return out


# ---- orchestration, in the parent process ---------------------------------------------------
def _quantile(xs, q):
    return float(torch.tensor(xs, dtype=torch.float64).quantile(q))


def _git_commit() -> str:
    if os.environ.get("CHORD_COMMIT"):  # set by scripts/gpu_acceptance (a copied tree's .git may be stale)
        return os.environ["CHORD_COMMIT"]
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


class Budget:
    """Wall-clock budget of a whole benchmark run: no worker starts once it is spent, and a
    running worker is killed when it runs out, so the run ends on time with what it has."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


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


def _context(args, device: str, baseline: str) -> dict:
    """What every row of this run shares, and the numbers needed to derive its ratios."""
    device_name = _device_name(device)
    logits_bytes = args.n * args.v * torch.empty(0, dtype=getattr(torch, args.dtype)).element_size()
    bw_peak = _peak_bandwidth(device_name) if device == "cuda" else None
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    common = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": _git_commit(),
        "device": device_name,
        "threads": args.threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "n": args.n,
        "v": args.v,
        "dtype": args.dtype,
        "temperature": args.temperature,
        "baseline": baseline,
    }
    print(
        f"{device_name} | N={args.n} V={args.v} {args.dtype} T={args.temperature} | logits {logits_bytes / 2**20:.0f} MiB"
        f" | baseline {baseline} | threads {common['threads']} | budget {args.budget_s:.0f} s"
    )
    return {"common": common, "logits_bytes": logits_bytes, "bw_peak": bw_peak}


def _spec(args, device: str, variant: str, passes, launch=None) -> dict:
    return {
        "variant": variant,
        "passes": list(passes),
        "n": args.n,
        "v": args.v,
        "dtype": args.dtype,
        "temperature": args.temperature,
        "reps": args.reps,
        "device": device,
        "threads": args.threads,
        "launch": launch,
        "check": launch is not None,
    }


def _row(ctx: dict, variant: str, which: str, res: dict, base: Optional[tuple], note: str) -> dict:
    """One CSV row from a worker's result for one pass; base = the baseline's (p50 ms, MiB)."""
    t = res["times_ms"]
    p20, p50, p80 = (_quantile(t, q) for q in (0.2, 0.5, 0.8))
    peak_mb = res["peak_bytes"] / 2**20
    bytes_moved = ctx["logits_bytes"] * {"fwd": 1, "bwd": 2, "fwd+bwd": 3}[which]
    bw_peak = ctx["bw_peak"]
    return dict(
        ctx["common"],
        variant=variant,
        **{"pass": which},
        p20_ms=round(p20, 3),
        p50_ms=round(p50, 3),
        p80_ms=round(p80, 3),
        peak_extra_mb=round(peak_mb, 1),
        peak_extra_x_logits=round(res["peak_bytes"] / ctx["logits_bytes"], 3),
        speedup_vs_baseline=round(base[0] / p50, 3) if base else "",
        mem_ratio_vs_baseline=round(peak_mb / base[1], 3) if base and base[1] > 0 else "",
        bandwidth_fraction=round(bytes_moved / (p50 / 1e3) / bw_peak, 3) if bw_peak else "",
        note=note,
    )


def _append_csv(path: str, rows: list):
    if path and rows:
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows)
        print(f"appended {len(rows)} rows to {path}")


def _measure(args, device: str, budget: Budget, variant: str, passes, launch=None) -> Optional[dict]:
    """Run one worker within the budget; None (and a printed reason) when it did not measure."""
    if budget.left() <= 0:
        print(f"{variant:22} not run: the --budget-s of {args.budget_s:.0f} s is spent")
        return None
    res = _spawn_worker(_spec(args, device, variant, passes, launch), min(args.timeout, budget.left()))
    if "error" in res:
        print(f"{variant:22} {','.join(passes)} failed: {res['error']}")
        return None
    return res


def run(args) -> list:
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    variants = args.variants.split(",") if args.variants else default_variants(device)
    baseline = args.baseline or ("megatron_ce+entropy" if device == "cuda" else "naive")
    why = unavailable_reason(baseline, device)
    if why and not args.baseline:  # e.g. a GPU box without megatron-core: still give ratios
        print(f"baseline {baseline} unavailable ({why}): using naive instead")
        baseline = "naive"
        variants = variants if "naive" in variants else ["naive"] + variants
    if baseline in variants:  # measure the baseline first so ratios can be printed as we go
        variants = [baseline] + [v for v in variants if v != baseline]
    passes = args.passes.split(",")
    budget = Budget(args.budget_s)
    ctx = _context(args, device, baseline)
    print(
        f"{'variant':22} {'pass':8} {'p20 ms':>9} {'p50 ms':>9} {'p80 ms':>9} {'speedup':>8} "
        f"{'extra MiB':>10} {'x logits':>9} {'mem ratio':>9} {'BW frac':>8}"
    )
    rows, base = [], {}
    for variant in variants:
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        reason = unavailable_reason(variant, device)
        if reason:
            print(f"{variant:22} skipped: {reason}")
            continue
        # One process per (variant, pass): on CPU, pages a previous pass touched would stay
        # resident and hide from the next pass's peak-RSS measurement.
        for which in passes:
            res = _measure(args, device, budget, variant, [which])
            if res is None:
                continue
            res = res[which]
            if variant == baseline:
                base[which] = (_quantile(res["times_ms"], 0.5), res["peak_bytes"] / 2**20)
            row = _row(ctx, variant, which, res, base.get(which), VARIANTS[variant].note)
            rows.append(row)
            print(
                f"{variant:22} {which:8} {row['p20_ms']:9.3f} {row['p50_ms']:9.3f} {row['p80_ms']:9.3f} "
                f"{row['speedup_vs_baseline']!s:>8} {row['peak_extra_mb']:10.1f} {row['peak_extra_x_logits']:9.3f} "
                f"{row['mem_ratio_vs_baseline']!s:>9} {row['bandwidth_fraction']!s:>8}",
                flush=True,
            )
    _append_csv(args.csv, rows)
    return rows


def run_sweep(args) -> list:
    """Time the triton_inplace variant over launch configurations, one worker process each."""
    import sweep

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    reason = unavailable_reason(sweep.SWEEP_VARIANT, device)
    if reason:
        raise SystemExit(f"--sweep needs {sweep.SWEEP_VARIANT}: {reason}")
    budget = Budget(args.budget_s)
    ctx = _context(args, device, "megatron_ce+entropy (naive when megatron-core is missing)")
    start, _, stop = args.grid.partition(":")
    grid = slice(int(start) if start else None, int(stop) if stop else None)
    cfgs = sweep.configs(args.v, device == "cpu", args.quick, grid)
    passes = list(PASSES)

    def time_config(cfg):
        print(f"timing {cfg.note()}", flush=True)
        return _measure(args, device, budget, sweep.SWEEP_VARIANT, passes, cfg.as_dict())

    # The default first, then the baselines, so the default's ratio survives an early budget stop.
    measured = [(cfgs[0], time_config(cfgs[0]))]
    baselines = {}
    for name in filter(None, args.baselines.split(",")):
        why = unavailable_reason(name, device)
        if why:
            print(f"{name}: not measured ({why})")
            continue
        print(f"timing baseline {name}", flush=True)
        res = _measure(args, device, budget, name, passes)
        if res is not None:
            baselines[name] = res
    measured += [(cfg, time_config(cfg)) for cfg in cfgs[1:]]

    baseline = next(iter(baselines), "")
    ctx["common"]["baseline"] = baseline
    base = {w: (_quantile(r["times_ms"], 0.5), r["peak_bytes"] / 2**20) for w, r in baselines.get(baseline, {}).items()}
    rows = [
        _row(ctx, name, w, r, base.get(w), VARIANTS[name].note)
        for name, res in baselines.items()
        for w, r in res.items()
    ]
    results = []
    for i, (cfg, res) in enumerate(measured):
        if res is None:
            continue
        check = res["check"]
        note = "sweep: " + cfg.note() + (" (default)" if i == 0 else "") + ("" if check["ok"] else " WRONG RESULTS")
        cfg_rows = {w: _row(ctx, sweep.SWEEP_VARIANT, w, res[w], base.get(w), note) for w in passes}
        rows += cfg_rows.values()
        if not check["ok"]:
            print(f"{cfg.note()}: results differ from naive beyond {CHECK_LIMITS}: {check}")
        fb = cfg_rows["fwd+bwd"]
        results.append(
            {
                "launch": cfg,
                "default": i == 0,
                "ms": {w: r["p50_ms"] for w, r in cfg_rows.items()},
                "bw": fb["bandwidth_fraction"] or None,
                "speedup": fb["speedup_vs_baseline"] or None,
                "check": check,
            }
        )
    print(sweep.table(results, baseline or None))
    default = results[0] if results and results[0]["default"] else None
    for name, res in baselines.items():
        if default is None:
            print(f"default config: not measured, so no ratio against {name}")
            continue
        ratios = {w: _quantile(res[w]["times_ms"], 0.5) / default["ms"][w] for w in passes}
        print(
            f"default {cfgs[0].note()} vs {name} (p50 ratio, >1 = faster): "
            + ", ".join(f"{w} {r:.2f}x" for w, r in ratios.items())
        )
    if not baselines:
        print("no baseline was measured (see above)")
    best = sweep.best_json(results)
    print(best if best else "no configuration was measured with correct results")
    _append_csv(args.csv, rows)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4096, help="tokens")
    p.add_argument("--v", type=int, default=32768, help="vocabulary (TP=1)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--passes", default=",".join(PASSES))
    p.add_argument("--variants", default="", help=f"comma list; default: all for the device ({', '.join(VARIANTS)})")
    p.add_argument(
        "--baseline",
        default="",
        help="default: megatron_ce+entropy on CUDA (naive if megatron-core is missing), naive on CPU",
    )
    p.add_argument("--reps", type=int, default=None, help="timed runs per (variant, pass); default 5 CPU / 50 GPU")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--csv", default=DEFAULT_CSV, help="append rows here ('' to skip)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per worker")
    p.add_argument("--cpu", action="store_true", help="benchmark CPU paths even when a GPU is present")
    p.add_argument("--quick", action="store_true", help="small shape, 3 reps: a smoke test (with --sweep: 2 configs)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=float("inf"),
        help="wall-clock budget for the whole run: no worker starts after it, a running one is killed",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="time triton_inplace over launch configs (one worker each, all passes) instead of variants",
    )
    p.add_argument(
        "--grid", default=":", help="with --sweep: START:STOP, part of launch.SWEEP_GRID (the default is always timed)"
    )
    p.add_argument("--baselines", default="megatron_ce+entropy,naive", help="with --sweep: comma list ('' for none)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    if args.quick:
        args.n, args.v, args.reps = 256, 2048, args.reps or 3
    if args.reps is None:
        args.reps = 50 if torch.cuda.is_available() and not args.cpu else 5
    (run_sweep if args.sweep else run)(args)


if __name__ == "__main__":
    main()
