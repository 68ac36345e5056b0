"""After a failed broadcast sync, the next sync sets up a new update group and succeeds.

The failed group is aborted, but torch still knows its name ("The specified group name has
already been created") and its rendezvous store may still hold the port, so the reconnect must
use a fresh group name and a fresh port. Over gloo, against a fake worker that joins with SGLang's
own init_custom_process_group and refuses only the first announcement."""

import pytest
import torch
from torch.distributed.distributed_c10d import _world

from chord_megatron.net import free_port
from chord_megatron.rollout.sglang.client import SGLangClient, SGLangError
from chord_megatron.rollout.sglang.engine import SGLangEngine
from chord_megatron.weight_sync.nccl import NcclSync
from tests.support import fake_sglang, sglang_contract
from tests.support.fake_sglang import stats

needs_wheel = pytest.mark.skipif(
    not sglang_contract.available(), reason="needs `pip install --no-deps sglang==0.5.23` and msgspec"
)


@needs_wheel
def test_sync_after_a_failed_one_reconnects_with_a_fresh_group_and_port(tmp_path):
    faults = ["--join-groups", "--refuse-distributed-after-s", "0.5", "--refuse-distributed-times", "1"]
    with fake_sglang.running(1, tmp_path, {0: faults}) as (w,):
        first_port = free_port()
        sync = NcclSync("127.0.0.1", first_port, backend="gloo", init_timeout_s=30)
        big = [("model.embed_tokens.weight", torch.ones(4 * 2**20))]  # 16 MB: the broadcast waits for the worker
        with SGLangEngine(SGLangClient([w.url], [w.url], backoff_s=0.05), weight_sync=sync) as eng:
            with pytest.raises(SGLangError, match="fault injection"):
                eng.update_weights(big, "1")
            assert sync.group is None
            # Unregistered too: a later NcclSync in this process may take the name again.
            assert "weight_update_group" not in _world.pg_names.values()
            small = [("model.norm.weight", torch.arange(8, dtype=torch.float32))]
            eng.update_weights(small, "2")
            assert eng.served_versions() == {w.url: "2"}
            eng.update_weights([("model.norm.weight", torch.full((8,), 3.0))], "3")  # the new group is kept
            sync.close(eng)
        s = stats(w)
        inits = [b for p, b in s["requests"] if p == "/init_weights_update_group"]
        assert len(inits) == 2
        assert inits[0]["group_name"] != inits[1]["group_name"]
        assert inits[0]["master_port"] == first_port != inits[1]["master_port"]
        assert s["received"]["model.norm.weight"][2] == pytest.approx(24.0)
        announced = [b["group_name"] for p, b in s["requests"] if p == "/update_weights_from_distributed"]
        assert announced == [inits[0]["group_name"]] + [inits[1]["group_name"]] * 2


def test_fresh_ports_come_from_the_reserved_range_and_skip_busy_ones():
    import socket

    base = free_port()
    with socket.socket() as busy:
        busy.bind(("", base + 1))
        busy.listen()
        sync = NcclSync("127.0.0.1", base, backend="gloo", port_range=(base, base + 3))
        assert sync._fresh_port() == base + 2  # not the one in use, not the busy one
    with pytest.raises(ValueError, match="port_range"):
        NcclSync("127.0.0.1", 5, backend="gloo", port_range=(10, 9))
