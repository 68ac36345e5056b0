"""The launch scripts under a REAL slurm: a single-node cluster started inside the test.

Debian's slurm-wlm (slurmctld + slurmd + munge) runs as root without systemd, as measured in
the platform notes: munge through its init script, a slurm.conf in a temp folder with
proctrack/linuxproc and task/none (the cgroup plugins fail silently in this sandbox: steps die
and the job still reads COMPLETED, so every test also checks the job's output files exist),
EnforcePartLimits=ALL (an impossible request fails at once instead of pending forever), no
scheduler tick. The daemons are started here and stopped by their PIDs.

What runs: launch/colocated.sbatch with CHORD_CPU=1 (the CPU demo, 2 processes, TP=2 over gloo);
the same script with rollout.engine=sglang over the project's fake SGLang workers and the real
sglang-router (chord doctor, servers with their --nccl-port, health waits, the router in the
trainer's Python with the plan's command line, shutdown), with a server that dies at once (the job
fails without waiting out its timeout), and with a router Python that lacks sglang-router (chord
doctor stops the job before anything starts); launch/disaggregated.sbatch refusing a 1-node job
before starting anything; launch/bench_kernels.sbatch at --quick.

Skipped, with the reason, where slurm is not installed or the user is not root; CI installs it
with `apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge`.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chord_megatron.config import load_config
from chord_megatron.metrics.logger import read_metrics
from chord_megatron.net import free_port
from tests.support.chord_cli import DEMO, ROOT, SHORT

pytestmark = pytest.mark.slow

DAEMONS = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged")
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}
MUNGE_INIT = "/etc/init.d/munge"
MUNGE_PID = Path("/run/munge/munged.pid")


def _why_not() -> str:
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if missing:
        return (
            f"slurm is not installed (missing: {', '.join(missing)}); "
            "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"
        )
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    if not Path(MUNGE_INIT).exists():
        return f"no {MUNGE_INIT} to start munge with"
    return ""


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class MiniSlurm:
    """One node called localhost with every CPU of this machine, one partition."""

    def __init__(self, root: Path):
        self.root = root
        self.procs = {}
        self.started_munge = False
        for d in ("state", "spool", "log"):
            (root / d).mkdir(parents=True, exist_ok=True)
        self.conf = root / "slurm.conf"
        self.conf.write_text(f"""\
ClusterName=chordtest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
EnforcePartLimits=ALL
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
NodeName=localhost CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def _run(self, *cmd, check=True, timeout=30):
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout

    def start(self):
        if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
            subprocess.run([MUNGE_INIT, "start"], check=True, capture_output=True, timeout=30)
            self.started_munge = True
        for name, argv in (
            ("slurmctld", [_exe("slurmctld"), "-D", "-f", str(self.conf)]),
            ("slurmd", [_exe("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)]),
        ):
            log = open(self.root / "log" / f"{name}.stdout", "wb")
            self.procs[name] = subprocess.Popen(
                argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                assert p.poll() is None, f"{name} exited ({p.returncode}):\n{self.logs()}"
            if self._run("sinfo", "--noheader", "--format=%T", check=False).strip() == "idle":
                return self
            time.sleep(0.3)
        raise AssertionError("the slurm node did not become idle in 30 s:\n" + self.logs())

    def stop(self):
        for name in ("slurmd", "slurmctld"):  # ours, by PID
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        if self.started_munge and MUNGE_PID.exists():
            try:
                os.kill(int(MUNGE_PID.read_text().strip()), signal.SIGTERM)
            except (ValueError, ProcessLookupError):
                pass

    def logs(self) -> str:
        return "\n".join(
            f"--- {f.name}\n" + f.read_text(errors="replace")[-3000:] for f in sorted((self.root / "log").glob("*"))
        )

    def sbatch(self, script: str, *args, env=None, cwd: Path, options=()) -> str:
        out = subprocess.run(
            ["sbatch", "--parsable", *options, str(ROOT / script), *map(str, args)],
            cwd=cwd,
            env=dict(self.env, **(env or {})),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, f"sbatch failed: {out.stderr}"
        return out.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict:
        text = self._run("scontrol", "show", "job", "--oneliner", job_id)
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait(self, job_id: str, timeout_s: float) -> dict:
        """Poll until the job ends; on timeout cancel it and fail with the daemons' logs."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in FINAL_STATES:
                return info
            time.sleep(0.5)
        self._run("scancel", job_id, check=False)
        raise AssertionError(
            f"job {job_id} still {self.job(job_id).get('JobState')} after {timeout_s} s\n{self.logs()}"
        )


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    cluster = MiniSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture()
def submit_dir(tmp_path):
    (tmp_path / "runs" / "slurm").mkdir(parents=True)  # the scripts' #SBATCH --output folder
    return tmp_path


def _job_env(**extra):
    """What a user exports before sbatch: the trainer's Python, the checkout, CPU mode."""
    return {"PYTHON": sys.executable, "CHORD_ROOT": str(ROOT), "CHORD_CPU": "1", "STOP_GRACE_S": "10", **extra}


def _sglang_env_python(folder: Path) -> str:
    """A stand-in for SGLang's Python as `sglang[all]==0.5.23` installs it: this interpreter, but
    without sglang-router (a sitecustomize hides the module), so a router started with it fails
    the way it would on a cluster."""
    blocker = folder / "no-sglang-router"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "sitecustomize.py").write_text(
        "import sys\n\n\n"
        "class _NoRouter:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'sglang_router':\n"
        "            raise ModuleNotFoundError(\"No module named 'sglang_router' (SGLang's environment)\")\n\n\n"
        "sys.meta_path.insert(0, _NoRouter())\n"
    )
    script = folder / "sglang-python"
    script.write_text(f'#!/bin/sh\nPYTHONPATH={blocker}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} "$@"\n')
    script.chmod(0o755)
    return str(script)


def _job_files(submit_dir: Path, info: dict):
    name, job_id = info["JobName"], info["JobId"]
    out = submit_dir / "runs" / "slurm" / f"{name}-{job_id}.out"
    return out, submit_dir / "runs" / "slurm" / f"{name}-{job_id}"


def _describe(out: Path, log_dir: Path) -> str:
    parts = [f"--- {out}\n" + (out.read_text(errors="replace")[-4000:] if out.exists() else "(missing)")]
    for f in sorted(log_dir.glob("*.log")) if log_dir.exists() else []:
        parts.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-3000:])
    return "\n".join(parts)


def test_cpu_demo_tp2_runs_under_slurm(slurm, submit_dir, base_cache):
    """colocated.sbatch, CHORD_CPU=1: 2 processes on 1 node, TP=2 over gloo, a few steps."""
    run = submit_dir / "run"
    job = slurm.sbatch(
        "launch/colocated.sbatch",
        DEMO,
        *SHORT,
        "parallel.tensor=2",
        "train.steps=3",
        "train.eval_every=3",
        f"train.output_dir={run}",
        f"base.cache_dir={base_cache}",
        env=_job_env(),
        cwd=submit_dir,
        options=["--nodes=1", f"--cpus-per-task={os.cpu_count()}"],
    )
    info = slurm.wait(job, timeout_s=240)
    out, log_dir = _job_files(submit_dir, info)
    detail = _describe(out, log_dir)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", detail
    # COMPLETED alone proves little here (see the module docstring): check what the job wrote.
    assert out.exists(), detail
    text = out.read_text()
    assert "training finished with status 0" in text, detail
    assert "TP=2 PP=1 VPP=- CP=1 DP=1" in (log_dir / "plan.txt").read_text()
    trainer_logs = list(log_dir.glob("trainer-*.log"))
    assert len(trainer_logs) == 1 and "final evaluation: eval/accuracy=" in trainer_logs[0].read_text(), detail
    steps = [r for r in read_metrics(run / "metrics.jsonl") if "loss/total" in r]
    assert [r["step"] for r in steps] == [0, 1, 2], detail


def test_sglang_servers_and_router_under_slurm(slurm, submit_dir):
    """The SGLang path of the scripts on CPU: launch/sglang_node.sh starts the project's fake
    workers in place of `sglang.launch_server`, the real sglang-router goes in front of them,
    training talks to the router, and at the end the job stops both steps gracefully.

    SGLANG_PYTHON is a Python without sglang-router (as sglang[all] installs it) and ROUTER_PYTHON
    is left to its default, the trainer's Python: the router starts with the command line
    plan.txt shows, as on a cluster."""
    run = submit_dir / "run"
    fake = f"env PYTHONPATH={ROOT} {sys.executable} -m tests.e2e.slurm.fake_sglang_server"
    sglang_python = _sglang_env_python(submit_dir)
    assert subprocess.run(
        [sglang_python, "-m", "sglang_router.launch_router", "--help"], capture_output=True
    ).returncode
    vocab = load_config(DEMO).model.vocab_size  # the fake samples token ids below --vocab
    job = slurm.sbatch(
        "launch/colocated.sbatch",
        DEMO,
        *SHORT,
        "base.steps=0",
        "train.steps=2",
        "train.eval_every=2",
        f"train.output_dir={run}",
        "rollout.engine=sglang",
        "sglang.model_path=/tmp",
        f"sglang.vocab={vocab}",  # fake-worker flags (sglang: pass-through)
        "rollout.verify_every=0",  # the fake's log-probs are made up
        env=_job_env(SGLANG_SERVER_CMD=fake, SGLANG_PYTHON=sglang_python),
        cwd=submit_dir,
        options=["--nodes=1", f"--cpus-per-task={os.cpu_count()}"],
    )
    info = slurm.wait(job, timeout_s=240)
    out, log_dir = _job_files(submit_dir, info)
    detail = _describe(out, log_dir)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", detail
    assert out.exists(), detail
    text = out.read_text()
    assert re.search(r"ready: router http://localhost:\d+ with 2 healthy workers", text), detail
    assert "training finished with status 0" in text, detail
    # Both steps were stopped by the script's cleanup (TERM through scancel), newest first.
    assert text.index("stopping sglang-router") < text.index("stopping sglang servers"), detail
    node_log = next(log_dir.glob("sglang-node-*.log")).read_text()
    assert "servers stopped" in node_log, detail
    assert len(list(log_dir.glob("sglang-*-[01].log"))) == 2 and (log_dir / "router.log").exists(), detail
    # the workers this job started are gone
    for pid in map(int, re.findall(r"server \d: pid (\d+)", node_log)):
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid
    # training used the router: every step rolled out through it
    steps = [r for r in read_metrics(run / "metrics.jsonl") if "loss/total" in r]
    assert [r["step"] for r in steps] == [0, 1] and all("reward/mean" in r for r in steps), detail
    trainer_log = next(log_dir.glob("trainer-*.log")).read_text()
    plan_text = (log_dir / "plan.txt").read_text()
    assert "rollout.router_url=http://localhost:" in plan_text
    assert "final evaluation" in trainer_log, detail
    # chord doctor ran first and saw both Pythons
    doctor = (log_dir / "doctor.txt").read_text()
    assert f"sglang: {sglang_python}" in doctor and "the environments fit together" in doctor, detail
    # the router ran the plan's command line, word for word, in the trainer's Python
    planned = plan_text.split("# router on localhost\n")[1].splitlines()[0]
    planned = shlex.split(planned.replace("$ROUTER_PYTHON", shlex.quote(sys.executable)))
    ran = shlex.split(re.search(r"router command: (.*)", text).group(1))
    assert ran == planned and ran[:3] == [sys.executable, "-m", "sglang_router.launch_router"], detail
    # every server got an NCCL port of the job's block, and not the trainer's CUDA setting
    port_base = int(re.search(r"PORT_BASE=(\d+)", text).group(1))
    server_logs = [f.read_text() for f in sorted(log_dir.glob("sglang-*-[01].log"))]
    nccl_ports = [int(re.search(r"nccl port (\d+)", t).group(1)) for t in server_logs]
    assert nccl_ports == [port_base + 40, port_base + 41], detail
    assert all("CUDA_DEVICE_MAX_CONNECTIONS unset" in t for t in server_logs), detail


def test_a_router_python_without_sglang_router_stops_the_job_before_it_starts(slurm, submit_dir):
    """chord doctor, run by the script after the plan, refuses ROUTER_PYTHON = SGLang's Python
    (no sglang-router) with the pip command, and nothing is started."""
    sglang_python = _sglang_env_python(submit_dir)
    job = slurm.sbatch(
        "launch/colocated.sbatch",
        DEMO,
        "rollout.engine=sglang",
        "sglang.model_path=/tmp",
        env=_job_env(SGLANG_SERVER_CMD="/bin/false", SGLANG_PYTHON=sglang_python, ROUTER_PYTHON=sglang_python),
        cwd=submit_dir,
        options=["--nodes=1"],
    )
    info = slurm.wait(job, timeout_s=120)
    out, log_dir = _job_files(submit_dir, info)
    detail = _describe(out, log_dir)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", detail
    text = out.read_text()
    assert f"fix: {sglang_python} -m pip install sglang-router==0.3.2" in text, detail
    assert "chord: doctor: 1 problem(s)" in text and "nothing was started" in text, detail
    assert not re.search(r"\] started ", text), detail


def test_a_server_that_dies_at_start_fails_the_job_without_waiting(slurm, submit_dir):
    job = slurm.sbatch(
        "launch/colocated.sbatch",
        DEMO,
        "rollout.engine=sglang",
        "sglang.model_path=/tmp",
        env=_job_env(SGLANG_SERVER_CMD="/bin/false", STARTUP_TIMEOUT_S="600"),
        cwd=submit_dir,
        options=["--nodes=1"],
    )
    start = time.monotonic()
    info = slurm.wait(job, timeout_s=120)
    out, log_dir = _job_files(submit_dir, info)
    detail = _describe(out, log_dir)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "1:0", detail
    assert time.monotonic() - start < 60, "the job waited for a server that was gone"
    text = out.read_text()
    assert re.search(r"ERROR: the step serving SGLang server http://localhost:\d+ exited", text), detail
    assert "started trainer" not in text and "started sglang-router" not in text, detail


def test_disaggregated_job_on_one_node_is_refused_before_starting_anything(slurm, submit_dir):
    job = slurm.sbatch(
        "launch/disaggregated.sbatch",
        DEMO,
        "sglang.model_path=/tmp",
        env=_job_env(),
        cwd=submit_dir,
        options=["--nodes=1"],
    )
    info = slurm.wait(job, timeout_s=120)
    out, log_dir = _job_files(submit_dir, info)
    detail = _describe(out, log_dir)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", detail
    text = out.read_text()
    assert "chord: launch plan: disaggregated mode needs a training node" in text, detail
    assert "nothing was started" in text and not re.search(r"\] started ", text), detail


def test_kernel_benchmark_script_appends_rows(slurm, submit_dir):
    csv = submit_dir / "results.csv"
    env = _job_env(BENCH_ARGS="--quick --variants naive,chunked --passes fwd --reps 2", BENCH_CSV=str(csv))
    job = slurm.sbatch("launch/bench_kernels.sbatch", env=env, cwd=submit_dir)
    info = slurm.wait(job, timeout_s=180)
    out, _ = _job_files(submit_dir, info)
    detail = out.read_text() if out.exists() else "(no output file)"
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", detail
    rows = csv.read_text().splitlines()
    assert rows[0].startswith("date,git_commit,device") and len(rows) == 3, detail  # header + naive + chunked
    assert "appended 2 rows" in detail
