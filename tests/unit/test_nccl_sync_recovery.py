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
def test_every_group_of_a_configured_sync_takes_its_port_from_rollout_sync_ports(tmp_path, monkeypatch):
    """rollout.sync_ports (what launch/ passes: the job's reserved range) -> transport_from_config:
    the first group and the one after a failed sync both rendezvous on ports of the range."""
    import socket

    from chord_megatron.config import load_config
    from chord_megatron.weight_sync.factory import transport_from_config

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    lo = free_port()
    hi = lo + 5
    faults = ["--join-groups", "--refuse-distributed-after-s", "0.5", "--refuse-distributed-times", "1"]
    with socket.socket() as busy, fake_sglang.running(1, tmp_path, {0: faults}) as (w,):
        busy.bind(("", lo))  # the range's first port is taken: it is skipped, not used
        busy.listen()
        cfg = load_config(None, ["rollout.weight_sync=nccl", f"rollout.sync_ports=[{lo},{hi}]"])
        sync = transport_from_config(cfg)
        assert isinstance(sync, NcclSync) and sync.port_range == (lo, hi) and sync.master_port == lo + 1
        sync.init_timeout_s = 30
        big = [("model.embed_tokens.weight", torch.ones(4 * 2**20))]
        with SGLangEngine(SGLangClient([w.url], [w.url], backoff_s=0.05), weight_sync=sync) as eng:
            with pytest.raises(SGLangError, match="fault injection"):
                eng.update_weights(big, "1")
            eng.update_weights([("model.norm.weight", torch.ones(8))], "2")
            sync.close(eng)
        ports = [b["master_port"] for p, b in stats(w)["requests"] if p == "/init_weights_update_group"]
        assert len(ports) == 2 and ports[0] != ports[1] and all(lo < p <= hi for p in ports), (ports, lo, hi)


def test_sync_ports_must_be_a_first_last_pair():
    from chord_megatron.config import ConfigError, load_config

    for bad in ("[10008]", "[10015,10008]", "[0,10]", "[10008,70000]"):
        with pytest.raises(ConfigError, match="rollout.sync_ports: must be \\[first, last\\]"):
            load_config(None, [f"rollout.sync_ports={bad}"])
    assert load_config(None, ["rollout.sync_ports=[10008,10015]"]).rollout.sync_ports == [10008, 10015]


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
