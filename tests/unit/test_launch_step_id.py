"""launch/common.sh's chord_step_id: the step's id from squeue, asked again when a call fails
(a busy slurmctld), since without it the cleanup can only kill the step's srun. With a stand-in
squeue on PATH that fails a set number of times before it answers."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def step_id(tmp_path, failures: int, tries: int = 3) -> str:
    count = tmp_path / "calls"
    fake = tmp_path / "bin" / "squeue"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/bash\n"
        f"n=$(($(cat {count} 2>/dev/null || echo 0) + 1)); echo $n > {count}\n"
        f"if ((n <= {failures})); then echo 'slurm_load_jobs error: Socket timed out' >&2; exit 1; fi\n"
        "echo '77.0 chord-sglang'; echo '77.1 chord-router'\n"
    )
    fake.chmod(0o755)
    script = f"source {ROOT / 'launch/common.sh'}; chord_step_id chord-router"
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "SLURM_JOB_ID": "77", "CHORD_SQUEUE_TRIES": str(tries)}
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_the_step_id_survives_a_failed_squeue_call(tmp_path):
    assert step_id(tmp_path, failures=1) == "77.1"
    assert (tmp_path / "calls").read_text().strip() == "2"


def test_no_id_after_the_last_try(tmp_path):
    assert step_id(tmp_path, failures=5, tries=2) == ""
    assert (tmp_path / "calls").read_text().strip() == "2"
