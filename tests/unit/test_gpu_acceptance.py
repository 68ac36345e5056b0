"""scripts/gpu_acceptance.sh: the one call a rare GPU gets. Its dry run walks every step on CPU
(Triton interpreted, toy sizes), which is what keeps the script from rotting between GPU runs."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.gpu_acceptance import run as acceptance

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_acceptance.sh"


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return dict(env, PYTHON=sys.executable, **extra)


def test_without_a_gpu_it_exits_2_with_one_line_and_runs_nothing(tmp_path):
    out = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(tmp_path / "r")],
        env=_env(CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert len(out.stdout.strip().splitlines()) == 1 and "no CUDA GPU" in out.stdout
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_dry_run_walks_every_step_on_cpu(tmp_path):
    t0 = time.monotonic()
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path / "r")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == [s.name for s in acceptance.STEPS]
    failed = {n: s["reason"] for n, s in steps.items() if s["status"] != "pass"}
    assert not failed and out.returncode == 0, (
        failed,
        out.stdout[-3000:],
        (tmp_path / "r" / "log.txt").read_text()[-5000:],
    )
    # Script steps report their named checks; every check passed.
    for name in ("kernel_large", "kernel_tp2"):
        checks = steps[name]["result"]["checks"]
        assert checks and all(c["ok"] for c in checks.values()), (name, checks)
    # The benchmark's rows, in results.csv's format, and the one-screen table at the end.
    header = (ROOT / "kernels" / "bench" / "results.csv").read_text().splitlines()[0]
    rows = (tmp_path / "r" / "kernel_bench.csv").read_text().splitlines()
    assert rows[0] == header and len(rows) > 3
    assert "pass" in out.stdout.splitlines()[-2] or "total" in out.stdout
    assert sum(s["seconds"] for s in summary["steps"]) < time.monotonic() - t0 + 1


def test_a_step_over_its_budget_is_killed_with_its_children_and_failed(tmp_path):
    # The step starts a grandchild that would outlive a plain kill of the step itself.
    marker = tmp_path / "grandchild-alive"
    script = tmp_path / "sleeper.py"
    child = f"import time; time.sleep(3); open({str(marker)!r}, 'w')"
    script.write_text(
        f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {child!r}])\ntime.sleep(60)\n"
    )
    step = acceptance.Step("sleeper", 1, "sleeps", lambda out, work, dry, budget_s: [sys.executable, str(script)])
    with open(tmp_path / "log.txt", "w") as log:
        res = acceptance.run_step(step, tmp_path, tmp_path, False, dict(os.environ), log)
    assert res["status"] == "fail" and "budget" in res["reason"] and res["seconds"] < 10
    time.sleep(3.5)
    assert not marker.exists(), "the step's child survived the kill"


def test_budgets_add_up_to_at_most_8_minutes():
    assert sum(s.budget_s for s in acceptance.STEPS) <= 8 * 60


def test_an_existing_results_folder_is_never_overwritten(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--only", "probe", "--out", str(tmp_path)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "already holds" in out.stdout
    assert (tmp_path / "summary.json").read_text() == "{}"


def test_readme_lists_every_step_with_its_budget():
    readme = (ROOT / "README.md").read_text()
    rows = {}
    for line in readme.split("## GPU acceptance", 1)[1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[2].endswith(" s") and cells[2][:-2].isdigit():
            rows[cells[0]] = int(cells[2][:-2])
    assert rows == {
        **{s.name: s.budget_s for s in acceptance.STEPS},
        "total": sum(s.budget_s for s in acceptance.STEPS),
    }
