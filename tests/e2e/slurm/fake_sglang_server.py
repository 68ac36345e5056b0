"""Stand-in for `python -m sglang.launch_server` in the slurm tests (no GPU, no SGLang build here).

launch/sglang_node.sh starts servers as `$SGLANG_SERVER_CMD --host H --port P --base-gpu-id G
<the sglang: section as flags>`; with SGLANG_SERVER_CMD = `python -m tests.e2e.slurm.fake_sglang_server` (the repository on PYTHONPATH), each server is the
project's fake worker (tests/support/fake_sglang.py). The fake serves on loopback only,
and has no GPUs, so --host becomes 127.0.0.1, and --base-gpu-id and --nccl-port are recorded in
the log and dropped; so is the value of CUDA_DEVICE_MAX_CONNECTIONS it was started with (a
trainer-only setting that must not reach the servers).
"""

import argparse
import os

from tests.support import fake_sglang


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host")
    p.add_argument("--base-gpu-id", type=int)
    p.add_argument("--nccl-port", type=int)
    args, rest = p.parse_known_args()
    connections = os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS", "unset")
    print(
        f"fake server: asked for host {args.host}, base GPU {args.base_gpu_id}, nccl port {args.nccl_port}; "
        f"CUDA_DEVICE_MAX_CONNECTIONS {connections}",
        flush=True,
    )
    fake_sglang.serve(["--host", "127.0.0.1", *rest])


if __name__ == "__main__":
    main()
