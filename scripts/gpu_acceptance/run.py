"""The GPU acceptance run: every GPU question this project has, answered in one time-boxed call.

    scripts/gpu_acceptance.sh [--out DIR] [--only a,b] [--skip a,b] [--dry-run]

Steps run in priority order, each in its own process group with its own time budget (killed at
the budget, recorded as failed), each skipped with a reason when what it needs is missing. All
results land in one folder: summary.json (every step's checks and numbers), log.txt (every
step's output) and kernel_bench.csv (rows in the format of kernels/bench/results.csv). The last
thing printed is a one-screen table of pass / fail / skip with timings. kernel_sweep.csv holds the
launch-configuration sweep.

Without a GPU it exits 2 with one line, never a pass. --dry-run walks every step's setup on CPU
at toy sizes (Triton interpreted, the GPU hidden even where one exists), so that CI keeps this
script from rotting between the rare GPU runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List

from scripts.gpu_acceptance.report import EXIT as STEP_EXIT

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PY = sys.executable


@dataclass(frozen=True)
class Step:
    name: str
    budget_s: int
    what: str
    command: Callable[[Path, Path, bool, int], List[str]]  # (out, work, dry_run, budget_s) -> argv
    pytest: bool = False  # results come from a JUnit XML file instead of <name>.json


def _script(name: str):
    module = f"scripts.gpu_acceptance.{name}"
    return lambda out, work, dry, budget_s: [PY, "-m", module, "--out", str(work)] + (["--dry-run"] if dry else [])


def _pytest(paths: List[str], name: str):
    def command(out, work, dry, budget_s):
        base = [PY, "-m", "pytest", "-m", "gpu", *paths, "-q", "-rs", "-p", "no:cacheprovider"]
        return base + (["--collect-only"] if dry else [f"--junitxml={work / (name + '.xml')}"])

    return command


GPU_SHAPE = ["--n", "16384", "--v", "152064", "--dtype", "bfloat16", "--reps", "20", "--timeout", "60"]


def _bench(sweep: bool):
    """bench_logprobs.py: the standard comparison, or --sweep over launch configurations. Its own
    --budget-s ends it a little before the step's, so that what it measured is still written."""
    csv = "kernel_sweep.csv" if sweep else "kernel_bench.csv"

    def command(out, work, dry, budget_s):
        argv = [PY, str(ROOT / "kernels/bench/bench_logprobs.py"), "--csv", str(out / csv)] + (
            ["--sweep"] if sweep else []
        )
        if dry:
            return (
                argv + ["--quick", "--cpu"] + ([] if sweep else ["--variants", "naive,chunked_inplace,triton_inplace"])
            )
        variants = [] if sweep else ["--variants", "megatron_ce+entropy,triton_inplace,naive,triton"]
        return argv + GPU_SHAPE + variants + ["--budget-s", str(budget_s - 12)]

    return command


# Priority order; budgets add up to 8 minutes on one GPU (the README lists them).
STEPS = [
    Step("probe", 20, "versions, GPU, copy bandwidth", _script("probe")),
    Step("kernel_tests", 30, "pytest -m gpu kernels/tests", _pytest(["kernels/tests"], "kernel_tests"), pytest=True),
    Step("kernel_large", 25, "N=16384 V=152064 bf16+fp32 vs chunked / float64", _script("kernel_large")),
    Step("kernel_tp2", 30, "TP=2: two processes on the GPU, gloo", _script("kernel_tp2")),
    Step("kernel_bench", 90, "fwd/bwd vs Megatron CE + entropy, bandwidth", _bench(False)),
    Step("kernel_sweep", 100, "launch configurations at that shape", _bench(True)),
    Step("engine_smoke", 50, "bf16 engine, world size 1 on NCCL", _script("engine_smoke")),
    Step("hf_parity", 45, "random tiny Qwen2 vs transformers", _script("hf_parity")),
    Step(
        "te_sglang",
        10,
        "pytest -m gpu tests/gpu (TE THD packing, SGLang)",
        _pytest(["tests/gpu"], "te_sglang"),
        pytest=True,
    ),
    Step("loop_smoke", 75, "chord train, the demo shortened, on the GPU", _script("loop_smoke")),
]


def _junit(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    reasons = sorted({s.get("message", "") for s in root.iter("skipped")})
    failed = [
        f"{c.get('classname')}.{c.get('name')}"
        for c in root.iter("testcase")
        if c.find("failure") is not None or c.find("error") is not None
    ]
    return {"counts": counts, "skip_reasons": reasons, "failed": failed}


def _outcome(step: Step, rc, work: Path, dry: bool, budget_s: int) -> dict:
    """status/reason/result of a finished (or killed: rc None) step."""
    if rc is None:
        killed = {"status": "fail", "reason": f"killed at its {budget_s} s budget"}
        done = work / f"{step.name}.json"
        if done.exists():  # its checks ran to the end, but the process did not exit
            res = json.loads(done.read_text())
            killed.update(
                reason=f"checks {res['status']}, then did not exit: killed at its {budget_s} s budget", result=res
            )
        return killed
    if step.pytest and not dry:
        xml = work / f"{step.name}.xml"
        if not xml.exists():
            return {"status": "fail", "reason": f"pytest exit {rc}, no report"}
        r = _junit(xml)
        c = r["counts"]
        ran = c["tests"] - c["skipped"]
        if c["failures"] or c["errors"] or rc not in (0, 5):
            return {
                "status": "fail",
                "reason": f"{len(r['failed'])} failed: {', '.join(r['failed'])[:300]}",
                "result": r,
            }
        if ran == 0:
            return {"status": "skip", "reason": "; ".join(r["skip_reasons"])[:300] or "no test selected", "result": r}
        return {"status": "pass", "reason": f"{ran} passed, {c['skipped']} skipped", "result": r}
    result_file = work / f"{step.name}.json"
    if result_file.exists():
        res = json.loads(result_file.read_text())
        if rc != STEP_EXIT[res["status"]]:  # e.g. stuck on its way out, then ended by faulthandler
            return {
                "status": "fail",
                "reason": f"checks {res['status']}, but exit code {rc} (hung at exit? stacks in log.txt)",
                "result": res,
            }
        return {"status": res["status"], "reason": res.get("reason", ""), "result": res}
    # Script steps always write their result file, skips included: without one, it crashed.
    if rc == 0 and (step.pytest or step.name.startswith("kernel_bench") or step.name == "kernel_sweep"):
        return {"status": "pass", "reason": ""}
    return {"status": "fail", "reason": f"exit code {rc}, no result file (see log.txt)"}


def run_step(step: Step, out: Path, work: Path, dry: bool, env: dict, log, budget_s: int = 0) -> dict:
    budget_s = budget_s or step.budget_s
    argv = step.command(out, work, dry, budget_s)
    env = dict(env, CHORD_STEP_BUDGET_S=str(budget_s))  # steps that run a child end it in time
    log.write(f"\n===== {step.name} ({step.what}); budget {budget_s} s\n$ {' '.join(argv)}\n")
    log.flush()
    t0 = time.monotonic()
    # A process group of its own, so that a step killed at its budget takes its children along.
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    seconds = round(time.monotonic() - t0, 1)
    res = {
        "name": step.name,
        "what": step.what,
        "budget_s": budget_s,
        "seconds": seconds,
        **_outcome(step, rc, work, dry, budget_s),
    }
    log.write(f"===== {step.name}: {res['status']} in {seconds} s {res['reason']}\n")
    log.flush()
    return res


def _git_commit() -> str:
    """The commit measured: CHORD_COMMIT when given (a copied tree may carry a stale .git, as the
    lent GPU machine's does), else git's HEAD. Steps read it from the same variable."""
    if os.environ.get("CHORD_COMMIT"):
        return os.environ["CHORD_COMMIT"]
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown (no git)"


def table(results: List[dict]) -> str:
    lines = [f"{'step':14} {'status':6} {'s':>6} {'budget':>6}  note", "-" * 78]
    for r in results:
        lines.append(f"{r['name']:14} {r['status']:6} {r['seconds']:6.1f} {r['budget_s']:6d}  {r['reason'][:44]}")
    total = sum(r["seconds"] for r in results)
    counts = {s: sum(r["status"] == s for r in results) for s in ("pass", "fail", "skip")}
    lines.append(
        f"{'total':14} {'':6} {total:6.1f} {sum(r['budget_s'] for r in results):6d}  "
        f"{counts['pass']} pass, {counts['fail']} fail, {counts['skip']} skip"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="", help="results folder (default: gpu-acceptance-<UTC time>)")
    p.add_argument("--only", default="", help="comma list of steps")
    p.add_argument("--skip", default="", help="comma list of steps")
    p.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="STEP=SECONDS",
        help="another budget for one step (a rerun of what was cut short)",
    )
    p.add_argument("--dry-run", action="store_true", help="walk every step on CPU at toy sizes")
    args = p.parse_args(argv)
    names = [s.name for s in STEPS]
    for flag in (args.only, args.skip):
        unknown = set(filter(None, flag.split(","))) - set(names)
        if unknown:
            p.error(f"unknown step(s) {', '.join(sorted(unknown))}; steps: {', '.join(names)}")
    budgets = {}
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in names or not seconds.isdigit():
            p.error(f"--budget {item}: expected STEP=SECONDS with STEP one of {', '.join(names)}")
        budgets[name] = int(seconds)
    steps = [
        s for s in STEPS if (not args.only or s.name in args.only.split(",")) and s.name not in args.skip.split(",")
    ]

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.dry_run:
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    else:
        import torch

        if not torch.cuda.is_available():
            print("gpu_acceptance: no CUDA GPU visible to torch (nothing was run; --dry-run walks the steps on CPU)")
            return 2
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out or f"gpu-acceptance-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if (out / "summary.json").exists():
        print(f"gpu_acceptance: {out} already holds a summary.json; choose another --out")
        return 2
    summary = {"started": stamp, "commit": _git_commit(), "dry_run": args.dry_run, "steps": []}
    env["CHORD_COMMIT"] = summary["commit"]
    with tempfile.TemporaryDirectory(prefix="gpu-acceptance-") as work, open(out / "log.txt", "a") as log:
        for step in steps:
            res = run_step(step, out, Path(work), args.dry_run, env, log, budgets.get(step.name, 0))
            summary["steps"].append(res)
            print(f"{step.name}: {res['status']} in {res['seconds']} s {res['reason'][:100]}", flush=True)
            (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))  # kept current if killed
    print()
    print(table(summary["steps"]))
    print(f"results: {out}")
    return 1 if any(r["status"] == "fail" for r in summary["steps"]) else 0


if __name__ == "__main__":
    sys.exit(main())
