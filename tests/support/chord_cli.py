"""Run `chord` as a user would, in a subprocess; the demo config and a shortened demo."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository
DEMO = ROOT / "configs" / "demo.yaml"

# A shortened demo: a small base stage, a few steps, a small held-out set.
SHORT = [
    "base.steps=40",
    "base.problems=4000",
    "data.arith_rl_prompts=200",
    "data.arith_expert_rows=100",
    "data.arith_eval_prompts=16",
    "train.eval_samples=2",
    "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "train.micro_batch_size=8",
    "rollout.max_new_tokens=32",
]


def chord(*args, check=True, timeout=600, **popen):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "chord_megatron.cli", *map(str, args)]
    if popen:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, **popen)
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"chord {' '.join(map(str, args))} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return out


# What differs between two runs of the same training by design: wall-clock metrics, and the
# probe check of the served weights, which a process runs at its first sync (a resumed run's
# record of that step carries sync/verify_*, an uninterrupted run's does not; the probe changes
# nothing the training sees).
PER_PROCESS = ("seconds", "per_s", "sync/verify_")


def comparable(records):
    """metrics.jsonl records without what differs between two runs of the same training."""
    return [{k: v for k, v in r.items() if not any(t in k for t in PER_PROCESS)} for r in records]
