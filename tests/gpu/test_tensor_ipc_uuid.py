"""A tensor-sync payload opened by another process that names the GPU differently (needs a GPU).

This process serializes a CUDA tensor with weight_sync.tensor.forking_pickle_b64; a child that
sees the same GPU through CUDA_VISIBLE_DEVICES=GPU-<uuid> unpickles it the way SGLang 0.5.23's
servers do (rebuild_cuda_tensor patched to resolve a UUID among its own devices) and must get
the same values, on its device 0, without a copy on our side. Skipped without a GPU."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.gpu

RECEIVER = r"""
import base64, pickle, sys
import torch
from torch.multiprocessing import reductions

original = reductions.rebuild_cuda_tensor

def rebuild_by_uuid(*args):  # what SGLang's patch_torch does on the receiving side
    device = args[6]
    if isinstance(device, str):
        matches = [i for i in range(torch.cuda.device_count()) if str(torch.cuda.get_device_properties(i).uuid) == device]
        assert len(matches) == 1, (device, matches)
        device = matches[0]
    return original(*args[:6], device, *args[7:])

reductions.rebuild_cuda_tensor = rebuild_by_uuid
(name, t), = pickle.loads(base64.b64decode(sys.stdin.read()))
print(name, t.device, t.dtype, repr(float(t.double().sum())), flush=True)
"""


def test_a_payload_names_its_gpu_by_uuid_and_opens_under_another_cuda_visible_devices():
    import os

    import torch

    from chord_megatron.weight_sync.tensor import forking_pickle_b64

    device = torch.device("cuda", torch.cuda.current_device())
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    t = torch.arange(1024, device=device, dtype=torch.bfloat16) / 7
    payload = forking_pickle_b64([("model.w", t)])
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=f"GPU-{uuid}")
    out = subprocess.run(
        [sys.executable, "-c", RECEIVER], input=payload, capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    name, dev, dtype, total = out.stdout.split()
    assert (name, dev, dtype) == ("model.w", "cuda:0", "torch.bfloat16")
    assert float(total) == float(t.double().sum())
