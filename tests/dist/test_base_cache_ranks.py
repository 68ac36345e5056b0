"""The demo's base model on nodes of different CPU kinds: every rank uses the cache file rank 0
names and found (demo/base_model.py), though another kind computes another key. Two gloo
processes; rank 1 claims another CPU kind. Without rank 0's view, rank 1 would miss the cached
base and start training one alone, in collectives rank 0 never joins."""

import pytest

from tests.support.dist_harness import run_job

pytestmark = pytest.mark.dist


def load_base(cache_dir):
    import os

    import torch.distributed as dist

    from chord_megatron.config import load_config
    from chord_megatron.demo import base_model

    cfg = load_config("configs/demo.yaml", [f"base.cache_dir={cache_dir}"])
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ["RANK"])
    own_path = base_model.cache_path(cfg)
    if rank == 1:
        base_model.rounding_kind = lambda: "another CPU / other kernels"
        assert base_model.cache_path(cfg) != own_path  # the other kind's own key: a file that is not there
    weights = base_model.base_weights(cfg)
    dist.barrier()
    return {
        "w": weights["w"],
        "world": dist.get_world_size(),
        "own_path_differs": base_model.cache_path(cfg) != own_path,
    }


def test_every_rank_loads_the_base_rank_0_found(tmp_path):
    import torch

    from chord_megatron.config import load_config
    from chord_megatron.demo.base_model import cache_path

    path = cache_path(load_config("configs/demo.yaml", [f"base.cache_dir={tmp_path}"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.arange(4.0)}, path)  # the cached base (a stand-in: no stage needed)
    r0, r1 = run_job(load_base, world=2, args=(str(tmp_path),), timeout=60)
    assert r0["world"] == r1["world"] == 2
    assert r1["own_path_differs"] and not r0["own_path_differs"]
    assert torch.equal(r0["w"], torch.arange(4.0)) and torch.equal(r1["w"], torch.arange(4.0))
