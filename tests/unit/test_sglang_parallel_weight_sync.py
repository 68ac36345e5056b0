"""SGLang 0.5.23 takes no weight update by NCCL broadcast or CUDA IPC tensors from a server with
dp_size > 1 (its tokenizer_control_mixin asserts dp_size == 1), and with pp_size > 1 two of a
server's GPUs take the same rank in the update group (rank_offset + tp_rank). Config validation
and `chord launch plan` refuse both, in one line naming the alternative; disk sync stays allowed."""

import ast

import pytest

from chord_megatron.config import ConfigError, load_config
from tests.support import sglang_contract
from tests.unit.test_launch_plan import QWEN7B, cli

SGLANG = ["rollout.engine=sglang"]


@pytest.mark.skipif(not sglang_contract.available(), reason="needs the sglang 0.5.23 wheel")
def test_the_wheel_still_refuses_dp_and_ranks_without_pp():
    """The facts the refusals rest on, read from SGLang's source."""
    source = (sglang_contract.sglang_dir() / "srt" / "managers" / "tokenizer_control_mixin.py").read_text()
    guarded = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AsyncFunctionDef):
            guarded[node.name] = "dp_size == 1" in ast.unparse(node)
    for route in ("init_weights_update_group", "update_weights_from_distributed", "update_weights_from_tensor"):
        assert guarded.get(route), route
    # A GPU's rank in the update group has no pipeline term: the stages of a server collide.
    updater = sglang_contract.sglang_dir() / "srt" / "model_executor" / "model_runner_components" / "weight_updater.py"
    assert "rank = rank_offset + self.tp_rank\n" in updater.read_text()


@pytest.mark.parametrize("sync", ["nccl", "tensor"])
@pytest.mark.parametrize("key,alternative", [("dp_size", "dp_size=1 and several servers"), ("pp_size", "pp_size=1")])
def test_config_refuses_dp_or_pp_with_nccl_or_tensor_sync(tmp_path, sync, key, alternative):
    with pytest.raises(ConfigError) as e:
        load_config(None, SGLANG + ["sglang.model_path=/m", f"sglang.{key}=2", f"rollout.weight_sync={sync}"])
    msg = str(e.value)
    assert f"sglang.{key}: 2" in msg and "rollout.weight_sync=disk" in msg and alternative in msg
    assert "\n" not in msg
    # disk sync reloads from a folder, which SGLang allows with any dp / pp
    load_config(None, SGLANG + ["sglang.model_path=/m", f"sglang.{key}=2", "rollout.weight_sync=disk"])
    load_config(None, SGLANG + ["sglang.model_path=/m", f"sglang.{key}=1", f"rollout.weight_sync={sync}"])


def test_sglangs_long_flag_names_count_too():
    with pytest.raises(ConfigError, match="sglang.dp_size"):
        load_config(None, SGLANG + ["sglang.model_path=/m", "sglang.data_parallel_size=4", "rollout.weight_sync=nccl"])


@pytest.mark.parametrize(
    "overrides,reason",
    [
        # disaggregated: the plan turns tensor into nccl, which the config (engine inprocess) never checked
        (["--nodes", 2, "sglang.dp_size=2"], "sglang.dp_size=2: SGLang refuses weight updates by nccl"),
        (["--nodes", 2, "sglang.pp_size=2"], "sglang.pp_size=2: with pipeline stages"),
        (["--nodes", 2, "sglang.dp_size=2", "rollout.weight_sync=disk"], None),  # disk sync works with DP
    ],
)
def test_launch_plan_refuses_dp_or_pp_with_broadcast_sync(tmp_path, capsys, overrides, reason):
    path = tmp_path / "qwen.yaml"
    path.write_text(QWEN7B)
    rc, out, err = cli(capsys, path, "rollout.engine=inprocess", *overrides)
    if reason is None:
        assert rc == 0 and out.startswith("launch plan: disaggregated"), err
        return
    assert rc == 2 and out == ""
    assert err.startswith("chord: launch plan: ") and err.count("\n") == 1 and reason in err, err
    assert "rollout.weight_sync=disk" in err


@pytest.mark.parametrize("transport", ["tensor", "nccl"])
def test_attached_servers_with_dp_are_refused_before_a_session_opens(tmp_path, transport):
    """Servers given by URL are described by their /server_info, not by the config."""
    import torch

    from chord_megatron.net import free_port
    from chord_megatron.rollout.sglang.client import SGLangClient
    from chord_megatron.rollout.sglang.engine import SGLangEngine
    from chord_megatron.weight_sync.buckets import WeightSyncError
    from chord_megatron.weight_sync.nccl import NcclSync
    from chord_megatron.weight_sync.tensor import TensorSync
    from tests.support import fake_sglang

    with fake_sglang.running(1, tmp_path, {0: ["--dp-size", "2"]}) as (w,):
        sync = TensorSync() if transport == "tensor" else NcclSync("127.0.0.1", free_port(), backend="gloo")
        with SGLangEngine(SGLangClient([w.url], [w.url], backoff_s=0.05), weight_sync=sync) as eng:
            with pytest.raises(
                WeightSyncError,
                match=rf"{w.url} runs with dp_size=2: SGLang refuses weight updates "
                rf"by {transport}.*rollout.weight_sync=disk",
            ):
                eng.update_weights([("model.norm.weight", torch.ones(4))], "1")
        assert fake_sglang.stats(w)["requests"] == []  # no session, no group: nothing to clean up on the server
