"""The environment and arguments each role of a launched job gets, without slurm: launch/env.sh
sourced as the sbatch scripts source it, then launch/sglang_node.sh and launch/train_node.sh run
as their srun tasks run them, with stand-ins for the SGLang server and for the trainer's Python
that record what they were given. (tests/e2e/test_slurm_demo.py checks the same under slurm.)"""

import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"


def recorder(path: Path, linger_s: float = 0.0) -> str:
    """A program that writes its environment and arguments to <dir>/<name>-<$$>.txt."""
    path.write_text(f'#!/bin/bash\nout="{path}-$$.txt"\nenv > "$out"; echo "ARGS $*" >> "$out"\nsleep {linger_s}\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def records(path: Path):
    out = []
    for f in sorted(path.parent.glob(path.name + "-*.txt")):
        lines = f.read_text().splitlines()
        env = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("ARGS "))
        args = next(line for line in lines if line.startswith("ARGS ")).split()[1:]
        out.append((env, args))
    return out


def run_role(script: str, env: dict, *args, submitter_env=()):
    """`source launch/env.sh` (in the batch script's shell, after what the user exported before
    sbatch), then the role's script as its own process, as srun starts it."""
    base = {k: v for k, v in os.environ.items() if k != "CUDA_DEVICE_MAX_CONNECTIONS"}
    base.update(dict(submitter_env))
    base.update(env)
    cmd = f'source "{LAUNCH}/env.sh" && bash "{LAUNCH}/{script}" "$@"'
    return subprocess.run(["bash", "-c", cmd, "role", *args], env=base, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("submitted", [None, "4"], ids=["default", "exported-before-sbatch"])
def test_cuda_device_max_connections_reaches_the_trainer_only(tmp_path, submitted):
    submitter = {"CUDA_DEVICE_MAX_CONNECTIONS": submitted} if submitted else {}
    server = tmp_path / "sglang-server"
    r = run_role(
        "sglang_node.sh",
        {
            "SGLANG_SERVER_CMD": recorder(server, linger_s=1),
            "SERVERS_PER_NODE": "2",
            "SGLANG_GPUS_PER_SERVER": "4",
            "SERVER_PORT_BASE": "12016",
            "SERVER_NCCL_PORT_BASE": "12040",
            "SGLANG_SERVER_ARGS": "--model-path /models/m --tp-size 4",
            "LOG_DIR": str(tmp_path),
            "STOP_GRACE_S": "5",
        },
        submitter_env=submitter,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    servers = records(server)
    assert len(servers) == 2, r.stdout + r.stderr
    for env, _ in servers:
        assert "CUDA_DEVICE_MAX_CONNECTIONS" not in env
        assert env["NCCL_SOCKET_IFNAME"] == "^lo,docker" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    # each server: its HTTP port and its NCCL port from the job's block, its first GPU
    assert sorted(
        (a[a.index("--port") + 1], a[a.index("--nccl-port") + 1], a[a.index("--base-gpu-id") + 1]) for _, a in servers
    ) == [("12016", "12040", "0"), ("12017", "12041", "4")]
    assert all(a[-4:] == ["--model-path", "/models/m", "--tp-size", "4"] for _, a in servers)

    python = tmp_path / "trainer-python"
    r = run_role(
        "train_node.sh",
        {
            "PYTHON": recorder(python),
            "TRAIN_HOSTS": socket.gethostname().split(".")[0],
            "NPROC_PER_NODE": "2",
            "TRAIN_PORT": "12000",
            "CHORD_CPU": "1",
        },
        "configs/demo.yaml",
        "train.steps=1",
        submitter_env=submitter,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    [(env, args)] = records(python)
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == (submitted or "1")
    assert args[:2] == ["-m", "torch.distributed.run"] and "--master-port=12000" in args
    assert args[-2:] == ["configs/demo.yaml", "train.steps=1"]
