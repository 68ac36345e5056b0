"""Ranks 1..N wait for rank 0's objects in a gloo group of their own (train/parallel.py
object_group), so a rollout + evaluation longer than the default group's timeout is not fatal.

One 2-process job, the timeouts scaled down: the default group gives up after 3 s, the object
group (parallel.rank0_wait_minutes = 0.5) after 30 s; rank 0 keeps rank 1 waiting 5 s. The
broadcast must go through the object group and arrive; the same wait on the default group must
fail (which shows the default timeout really bites at this scale)."""

import pytest

from tests.support.dist_harness import run_job

pytestmark = pytest.mark.dist

DEFAULT_TIMEOUT_MIN = 0.05  # 3 s
WAIT_MINUTES = 0.5  # 30 s
RANK0_BUSY_S = 5.0


def wait_job():
    import time

    import torch.distributed as dist

    from chord_megatron import services
    from chord_megatron.config import ParallelConfig
    from chord_megatron.train import parallel

    parallel.init_distributed("gloo", timeout_minutes=DEFAULT_TIMEOUT_MIN)
    parallel.init_parallel(ParallelConfig(rank0_wait_minutes=WAIT_MINUTES))  # creates the object group
    rank = dist.get_rank()
    group, timeout = parallel._OBJECT_GROUP
    groups_used = []
    real = dist.broadcast_object_list

    def recording(box, src=0, group=None, **kw):
        groups_used.append(group)
        return real(box, src=src, group=group, **kw)

    dist.broadcast_object_list = recording
    try:
        if rank == 0:
            time.sleep(RANK0_BUSY_S)  # "collect + eval"
        t0 = time.monotonic()
        got = services._broadcast({"step": 7, "rows": list(range(5))} if rank == 0 else None)
        waited = time.monotonic() - t0
    finally:
        dist.broadcast_object_list = real

    # The control: the same wait on the default group times out.
    default_error = None
    if rank == 0:
        time.sleep(RANK0_BUSY_S)
    try:
        box = ["late" if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
    except Exception as e:  # noqa: BLE001 - whatever gloo raises on a timeout
        default_error = type(e).__name__
    return {
        "got": got,
        "waited": waited,
        "through_object_group": groups_used == [group],
        "backend": dist.get_backend(group),
        "timeout": timeout,
        "default_error": default_error,
    }


def test_rank0_objects_wait_longer_than_the_default_timeout_in_a_gloo_group():
    import datetime

    r0, r1 = run_job(wait_job, world=2, timeout=120)
    for r in (r0, r1):
        assert r["got"] == {"step": 7, "rows": [0, 1, 2, 3, 4]}
        assert r["through_object_group"] and r["backend"] == "gloo"
        assert r["timeout"] == datetime.timedelta(minutes=WAIT_MINUTES)
    assert r1["waited"] > RANK0_BUSY_S - 1.0 > DEFAULT_TIMEOUT_MIN * 60  # waited past the default timeout
    assert r1["default_error"] is not None  # ... which the default group would not have survived
