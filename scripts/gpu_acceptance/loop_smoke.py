"""Step 8: `chord train` itself on the GPU: the CPU demo, shortened, end to end.

The trainer runs bf16 on the GPU (NCCL, world size 1); the in-process rollout engine samples on
the CPU in fp32 and receives every update through the tensor transport; every sync is verified
(bf16 trainer against fp32 engine: the precision-aware tolerance). Records steps per second, the
served-weights KL at each sync, the rollout/trainer mismatch and the held-out accuracy: the
loop's first numbers on a GPU, with the time of each phase of a step (generation, rewards,
forward/backward, sync, probe) as `chord bench loop` reports it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from chord_megatron.commands.bench_loop import phase_seconds
from scripts.gpu_acceptance.report import StepReport
from tests.support.chord_cli import SHORT as DEMO_SHORT

ROOT = Path(__file__).resolve().parents[2]
# The shortened demo the end-to-end tests run, without evaluations or a progress bar.
SHORT = [*DEMO_SHORT, "train.eval_every=0", "--no-progress"]


def main():
    rep = StepReport("loop_smoke", __doc__.splitlines()[0])
    import torch

    if not rep.dry_run and not torch.cuda.is_available():
        rep.skip("no CUDA")
    run = rep.out / "loop_smoke_run"
    steps = 3 if rep.dry_run else 8
    argv = [
        sys.executable,
        "-m",
        "chord_megatron.cli",
        "train",
        str(ROOT / "configs/demo.yaml"),
        *SHORT,
        f"train.steps={steps}",
        f"train.output_dir={run}",
        f"base.cache_dir={rep.out / 'base-cache'}",
        "--overwrite",  # the step's own folder: a rerun of the acceptance starts the run over
    ]
    # The child's output streams into the step's log as it comes. Past the step's budget (less a
    # margin) it gets SIGABRT, on which Python's faulthandler prints every thread's stack: a slow
    # or stuck loop then says where it was.
    limit = float(os.environ.get("CHORD_STEP_BUDGET_S", "600")) - 8
    env = dict(os.environ, PYTHONFAULTHANDLER="1", PYTHONUNBUFFERED="1")
    with rep.check("chord_train"):
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sys.stdout, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=30)
            rc = None
        rep.record(
            "chord_train",
            rc == 0,
            exit_code=rc,
            seconds=round(time.monotonic() - t0, 1),
            note=None if rc is not None else f"still running after {limit:.0f} s: aborted (stacks in the log)",
        )
    metrics = run / "metrics.jsonl"
    if metrics.exists():
        with rep.check("metrics"):
            records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            train = [r for r in records if "loss/total" in r]
            secs = [r["step/seconds"] for r in train if "step/seconds" in r]
            finite = all(math.isfinite(v) for r in records for v in r.values() if isinstance(v, float))
            later = secs[1:] or secs  # the first step compiles kernels
            rep.record(
                "metrics",
                len(train) == steps and finite,
                steps=len(train),
                all_finite=finite,
                steps_per_s=round(len(later) / sum(later), 3) if later else None,
                step_seconds=[round(s, 3) for s in secs],
                sync_verify_kl=[r.get("sync/verify_kl") for r in train if "sync/verify_kl" in r],
                mismatch_kl=[r.get("mismatch/kl") for r in train if "mismatch/kl" in r],
                mismatch_max=[r.get("mismatch/max") for r in train if "mismatch/max" in r],
                eval_accuracy=[r["eval/accuracy"] for r in records if "eval/accuracy" in r],
                # where a step's time goes, as `chord bench loop` reports it (issue #18)
                phase_seconds={k: round(v, 4) for k, v in phase_seconds(records).items()} if len(train) >= 3 else None,
            )
    rep.finish()


if __name__ == "__main__":
    main()
