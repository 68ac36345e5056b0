"""`chord launch plan`: node roles, the parallel layout, SGLang servers, the memory estimate,
the commands, and the refusals. Expected numbers are worked out by hand here, not by calling
the module's own helpers. Also the launch/ scripts: syntax, no kill-by-name, one NCCL file,
the port numbers shared with the plan."""

import math
import pathlib
import re
import shlex
import subprocess

import pytest

from chord_megatron.cli import main
from chord_megatron.commands.launch import memory, script_env
from chord_megatron.commands.launch import plan as lp
from chord_megatron.config import load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
GIB = 2**30

# Qwen2.5-7B's shape. Hugging Face lists 7,615,616,512 parameters for it.
QWEN7B = """
model: {name: qwen2.5-7b, num_layers: 28, hidden_size: 3584, ffn_hidden_size: 18944, num_attention_heads: 28,
        num_query_groups: 4, vocab_size: 152064, max_seq_length: 4096, qkv_bias: true, tie_embeddings: false}
parallel: {tensor: 2, pipeline: 1}
rollout: {engine: sglang, prompts_per_step: 32, samples_per_prompt: 8, max_new_tokens: 2048}
data: {max_prompt_tokens: 1024, max_response_tokens: 2048}
train: {micro_batch_size: 1}
algorithm: {expert_data_ratio: 0.2}
sglang: {model_path: /models/qwen2.5-7b, tp_size: 2, mem_fraction_static: 0.3}
"""
QWEN7B_PARAMS = 7_615_616_512


@pytest.fixture()
def qwen(tmp_path):
    path = tmp_path / "qwen7b.yaml"
    path.write_text(QWEN7B)
    return path


def plan(path, *overrides, **kw):
    return lp.plan_launch(load_config(path, overrides), **kw)


def cli(capsys, path, *args):
    rc = main(["launch", "plan", str(path), *map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ----------------------------------------------------------------------------------------------
# Parameter count and memory estimate
# ----------------------------------------------------------------------------------------------
def test_parameter_count_matches_the_published_qwen7b_number(qwen):
    assert memory.count_params(load_config(qwen).model)["total"] == QWEN7B_PARAMS


def test_parameter_count_with_head_dim_and_qk_norm_matches_qwen3_8b():
    import dataclasses

    from chord_megatron.config import ModelConfig

    if "head_dim" not in {f.name for f in dataclasses.fields(ModelConfig)}:
        pytest.skip("model.head_dim is not in this checkout's config")
    cfg = load_config(
        None,
        [
            "model.num_layers=36",
            "model.hidden_size=4096",
            "model.ffn_hidden_size=12288",
            "model.num_attention_heads=32",
            "model.num_query_groups=8",
            "model.head_dim=128",
            "model.qk_layernorm=true",
            "model.vocab_size=151936",
            "model.tie_embeddings=false",
            "model.max_seq_length=4096",
        ],
    )
    assert memory.count_params(cfg.model)["total"] == 8_190_735_360  # Qwen3-8B on Hugging Face


def test_memory_estimate_by_hand(qwen):
    # disaggregated, 4 nodes: 1 rollout node, 3 training nodes = 24 GPUs, TP=2 -> DP=12.
    p = plan(qwen, nodes=4, gpus_per_node=8)
    per_gpu = QWEN7B_PARAMS / 2
    weights, grads, optimizer = per_gpu * 2, per_gpu * 4, per_gpu * 12 / 12
    seq = 1024 + 2048  # prompt + max(new tokens, response tokens), under max_seq_length 4096
    per_layer = seq * 3584 * (10 + 24 / 2)  # micro-batch 1, no sequence parallelism
    # rows: 256 on-policy + 64 expert (0.2 of the batch) = 320 over DP 12 -> 27 micro-batches;
    # PP=1 keeps one micro-batch in flight: all 28 layers.
    activations = 28 * per_layer
    logits = seq * 152064 / 2 * 2  # bf16 logits straight into the kernel, no fp32 copy
    kernel = seq * 20 * 4  # the fused kernel's fp32 per-token partials and stats
    # disaggregated: no SGLang on the trainer GPUs; the train step is the peak
    total = weights + grads + optimizer + activations + logits + kernel + 3 * GIB
    m = p.memory
    assert (m.weights, m.grads, m.optimizer) == pytest.approx((weights, grads, optimizer))
    assert m.activations == pytest.approx(activations) and m.logits == pytest.approx(logits)
    assert m.total == pytest.approx(total)
    assert 34.0 * GIB < m.total < 35.0 * GIB
    assert m.budget == pytest.approx(79.6 * GIB)  # disaggregated: the whole GPU
    assert m.sglang_weights == pytest.approx(QWEN7B_PARAMS * 2 / 2)  # bf16 over sglang TP 2


def test_memory_colocated_counts_sglang_and_dp_shards_the_optimizer(qwen):
    p = plan(qwen, nodes=2, gpus_per_node=8, mode="colocated")  # 16 GPUs, TP 2 -> DP 8
    assert p.memory.budget == pytest.approx(79.6 * GIB)
    assert p.memory.term("SGLang static") == pytest.approx(79.6 * GIB * 0.3)
    assert p.memory.optimizer == pytest.approx(QWEN7B_PARAMS / 2 * 12 / 8)
    # without the distributed optimizer every rank keeps all of it -- and the layout no longer fits
    no_dist = load_config(qwen, ["parallel.distributed_optimizer=false"])
    assert memory.estimate_memory(no_dist, p.layout).optimizer == pytest.approx(QWEN7B_PARAMS / 2 * 12)
    with pytest.raises(lp.LayoutError, match="estimated training memory"):
        lp.plan_launch(no_dist, nodes=2, gpus_per_node=8, mode="colocated")


def test_pipeline_stage_holds_its_layers_plus_embedding_or_output(qwen):
    p = plan(qwen, "parallel.pipeline=2", nodes=2, gpus_per_node=8, mode="colocated")
    layer = (QWEN7B_PARAMS - 2 * 152064 * 3584 - 3584) // 28
    last = 14 * layer + 152064 * 3584 + 3584  # output layer + final norm
    assert p.memory.params_per_gpu == last // 2


# ----------------------------------------------------------------------------------------------
# Layouts: 1, 2, 4, 16 nodes of 8 GPUs, both modes
# ----------------------------------------------------------------------------------------------
# nodes -> (rollout nodes, training nodes) with the default ceil(N / 4) rollout nodes
DISAGG = {2: (1, 1), 4: (1, 3), 16: (4, 12)}


@pytest.mark.parametrize("nodes", [2, 4, 16])
def test_disaggregated_layout_and_commands(qwen, capsys, nodes):
    R, T = DISAGG[nodes]
    world = T * 8
    dp = world // 2  # TP 2, PP 1, CP 1
    servers = R * 4  # 8 GPUs / sglang TP 2 per rollout node
    p = plan(qwen, nodes=nodes, gpus_per_node=8, config_path="cfg.yaml", overrides=["train.steps=5"])
    assert (p.rollout_nodes, p.train_nodes) == (R, T)
    assert (p.layout.tp, p.layout.pp, p.layout.cp, p.layout.dp, p.layout.world) == (2, 1, 1, dp, world)
    assert (p.sglang_tp, p.servers_per_node, p.num_servers) == (2, 4, servers)
    assert p.weight_sync == "nccl"
    roles = [n.roles for n in p.node_roles]
    assert roles[0] == ("sglang", "router") and all(r == ("sglang",) for r in roles[1:R])
    assert all(r == ("train",) for r in roles[R:])
    assert [(n.train_ranks.start, n.train_ranks.stop) for n in p.node_roles[R:]] == [
        (8 * i, 8 * i + 8) for i in range(T)
    ]

    cmds = p.commands
    assert (
        cmds["sbatch"] == f"mkdir -p runs/slurm && sbatch --nodes={nodes} --gpus-per-node=8 "
        f"launch/disaggregated.sbatch cfg.yaml train.steps=5"
    )
    server_cmds = [c for k, c in cmds.items() if k.startswith("sglang server")]
    assert len(server_cmds) == servers
    assert all("--tp-size 2" in c and "--model-path /models/qwen2.5-7b" in c for c in server_cmds)
    assert sorted({int(re.search(r"--base-gpu-id (\d+)", c).group(1)) for c in server_cmds}) == [0, 2, 4, 6]
    router = next(c for k, c in cmds.items() if k.startswith("router on node0"))
    urls = router.split("--worker-urls ")[1].split(" --")[0].split()
    assert len(urls) == servers and urls[0] == "http://node0:$((PORT_BASE+16))"
    assert f"http://node{R - 1}:$((PORT_BASE+19))" in urls
    assert router.startswith("$ROUTER_PYTHON -m sglang_router.launch_router ")  # not SGLang's Python
    # each server's own NCCL port is pinned inside the job's block, next to its HTTP port
    nccl = sorted({re.search(r"--nccl-port (\S+)", c).group(1) for c in server_cmds})
    assert nccl == [f"$((PORT_BASE+{40 + i}))" for i in range(4)]
    trainers = [c for k, c in cmds.items() if k.startswith("trainer node")]
    assert len(trainers) == T
    for rank, c in enumerate(trainers):
        assert f"--nnodes={T} --node-rank={rank} --nproc-per-node=8 --master-addr=node{R}" in c
        assert c.endswith(
            "train --no-progress cfg.yaml rollout.engine=sglang "
            "rollout.router_url=http://node0:$((PORT_BASE+1)) rollout.weight_sync=nccl "
            '"rollout.sync_ports=[$((PORT_BASE+8)),$((PORT_BASE+15))]" train.steps=5'
        )

    rc, out, err = cli(capsys, qwen, "--nodes", nodes, "--gpus-per-node", 8)
    assert rc == 0 and err == ""
    assert f"TP=2 PP=1 VPP=- CP=1 DP={dp}  (DP = {world} trainer GPUs" in out
    assert f"rollout: {servers} SGLang server(s), 2 GPU(s) each (sglang TP), 4 per node" in out


def test_disaggregated_on_one_node_is_refused(qwen, capsys):
    rc, out, err = cli(capsys, qwen, "--nodes", 1)  # default rollout nodes: ceil(1 / 4) = 1
    assert rc == 2 and out == ""
    assert err == (
        "chord: launch plan: disaggregated mode needs a training node: 1 rollout node(s) of 1 leave none "
        "(use more --nodes, fewer --rollout-nodes, or --mode colocated)\n"
    )


@pytest.mark.parametrize("nodes", [1, 2, 4, 16])
def test_colocated_layout_and_commands(qwen, capsys, nodes):
    world = nodes * 8
    p = plan(qwen, nodes=nodes, gpus_per_node=8, mode="colocated")
    assert (p.rollout_nodes, p.train_nodes) == (0, nodes)
    assert (p.layout.dp, p.layout.world) == (world // 2, world)
    assert (p.servers_per_node, p.num_servers) == (4, 4 * nodes)
    assert p.node_roles[0].roles == ("train", "sglang", "router")
    assert all(n.roles == ("train", "sglang") for n in p.node_roles[1:])
    # one node: CUDA IPC reaches every server; several: tensor cannot leave rank 0's node -> disk
    assert p.weight_sync == ("tensor" if nodes == 1 else "disk")
    assert (len(p.warnings) == 1 and "shares" in p.warnings[0]) if nodes > 1 else p.warnings == ()
    assert p.commands["sbatch"].endswith(f"sbatch --nodes={nodes} --gpus-per-node=8 launch/colocated.sbatch CONFIG")
    trainers = [c for k, c in p.commands.items() if k.startswith("trainer node")]
    assert len(trainers) == nodes and all("--master-addr=node0" in c for c in trainers)
    rc, out, _ = cli(capsys, qwen, "--nodes", nodes, "--mode", "colocated")
    assert rc == 0 and f"DP={world // 2}  (DP = {world} trainer GPUs" in out


def test_colocated_inprocess_demo_has_no_servers(capsys):
    rc, out, _ = cli(
        capsys,
        ROOT / "configs/demo.yaml",
        "--nodes",
        1,
        "--gpus-per-node",
        2,
        "--mode",
        "colocated",
        "parallel.tensor=2",
    )
    assert rc == 0
    assert "TP=2 PP=1 VPP=- CP=1 DP=1" in out and "in-process on trainer rank 0" in out
    assert "sglang" not in out.split("commands:")[1]


def test_pipeline_and_virtual_stages_on_16_nodes(qwen):
    p = plan(
        qwen,
        "parallel.tensor=4",
        "parallel.pipeline=2",
        "parallel.virtual_pipeline=2",
        "parallel.context=2",
        nodes=16,
        gpus_per_node=8,
    )
    assert (p.layout.tp, p.layout.pp, p.layout.vpp, p.layout.cp) == (4, 2, 2, 2)
    assert p.layout.dp == 12 * 8 // (4 * 2 * 2) == 6


def test_explicit_rollout_nodes_and_script_values(qwen, tmp_path):
    p = plan(qwen, nodes=8, gpus_per_node=8, rollout_nodes=3, hosts=[f"gpu{i:02d}" for i in range(8)], port_base=12000)
    assert (p.rollout_nodes, p.train_nodes, p.layout.dp, p.num_servers) == (3, 5, 20, 12)
    assert p.commands["sbatch"].startswith("mkdir -p runs/slurm && ROLLOUT_NODES=3 sbatch --nodes=8")
    trainer = next(c for k, c in p.commands.items() if k.startswith("trainer node 4 on gpu07"))
    assert "--master-addr=gpu03 --master-port=12000" in trainer and "router_url=http://gpu00:12001" in trainer
    router = next(c for k, c in p.commands.items() if k.startswith("router on gpu00"))
    assert "--prometheus-port 12002" in router and "http://gpu02:12019" in router
    assert "'rollout.sync_ports=[12008,12015]'" in trainer


def test_rollout_nodes_come_from_the_config_unless_the_command_line_says(qwen, capsys):
    # launch.rollout_nodes=2 on 4 nodes: 2 rollout + 2 training nodes (TP 2 -> DP 8), where the
    # default ceil(4 / 4) = 1 would give 1 + 3 (DP 12)
    p = plan(qwen, "launch.rollout_nodes=2", nodes=4, gpus_per_node=8)
    assert (p.rollout_nodes, p.train_nodes, p.layout.dp, p.num_servers) == (2, 2, 8, 8)
    assert [n.roles for n in p.node_roles] == [("sglang", "router"), ("sglang",), ("train",), ("train",)]
    # the config carries the count, so the sbatch line needs no ROLLOUT_NODES
    assert (
        p.commands["sbatch"]
        == "mkdir -p runs/slurm && sbatch --nodes=4 --gpus-per-node=8 launch/disaggregated.sbatch CONFIG"
    )
    # --rollout-nodes (ROLLOUT_NODES in the scripts) wins
    p = plan(qwen, "launch.rollout_nodes=2", nodes=4, gpus_per_node=8, rollout_nodes=1)
    assert (p.rollout_nodes, p.train_nodes, p.layout.dp) == (1, 3, 12)
    # and the CLI reads it too
    rc, out, _ = cli(capsys, qwen, "--nodes", 4, "launch.rollout_nodes=2")
    assert rc == 0 and "2 rollout node(s) (SGLang), 2 training node(s)" in out and "DP=8  (DP = 16" in out
    # too many is refused naming the key that said so
    rc, _, err = cli(capsys, qwen, "--nodes", 2, "launch.rollout_nodes=2")
    assert rc == 2 and "2 rollout node(s) of 2 leave none (use more --nodes, fewer launch.rollout_nodes" in err
    # colocated has no rollout nodes: the key is ignored, with a warning
    p = plan(qwen, "launch.rollout_nodes=2", nodes=2, gpus_per_node=8, mode="colocated")
    assert p.rollout_nodes == 0 and any("launch.rollout_nodes=2 applies to disaggregated" in w for w in p.warnings)


def test_rollout_nodes_key_is_checked(qwen, capsys):
    rc, _, err = cli(capsys, qwen, "--nodes", 4, "launch.rollout_nodes=0")
    assert rc == 2 and "launch.rollout_nodes: must be >= 1 (or null for the default), got 0" in err


def test_script_env_takes_the_configs_rollout_nodes(qwen, capsys):
    rc = script_env.main(
        [
            "script-env",
            str(qwen),
            "launch.rollout_nodes=3",
            "--nodes",
            "4",
            "--gpus-per-node",
            "8",
            "--mode",
            "disaggregated",
        ]
    )
    env = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert rc == 0 and (env["ROLLOUT_NODES"], env["TRAIN_NODES"]) == ("3", "1")


# ----------------------------------------------------------------------------------------------
# Refusals: exit 2, one line naming the reason
# ----------------------------------------------------------------------------------------------
REFUSALS = [
    # (extra CLI args / overrides, a fragment of the one-line reason)
    (
        ["--nodes", 1, "--mode", "colocated", "parallel.pipeline=7"],
        "TP x PP x CP = 2 x 7 x 1 = 14 does not divide the 8 trainer GPUs",
    ),
    (
        ["--nodes", 2, "sglang.tp_size=16"],
        "an SGLang server needs 16 GPUs (sglang TP x DP), which must divide --gpus-per-node=8",
    ),
    (["--nodes", 2, "sglang.tp_size=3"], "an SGLang server needs 3 GPUs"),
    (["--nodes", 2, "--gpus-per-node", 2, "parallel.tensor=4"], "parallel.tensor=4 must divide --gpus-per-node=2"),
    (["--nodes", 2, "--gpus-per-node", 6, "parallel.tensor=4"], "parallel.tensor=4 must divide --gpus-per-node=6"),
    (["--nodes", 2, "--rollout-nodes", 2], "disaggregated mode needs a training node: 2 rollout node(s) of 2"),
    (["--nodes", 4, "--rollout-nodes", 0], "disaggregated mode needs --rollout-nodes >= 1"),
    (["--nodes", 2, "--mode", "colocated", "--rollout-nodes", 1], "--rollout-nodes applies to --mode disaggregated"),
    (
        ["--nodes", 4, "--mode", "colocated", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2"],
        "DP=16 ranks but a step can have as few as 4 rows",
    ),
    (["--nodes", 1, "--mode", "colocated", "model.vocab_size=151937"], "model.vocab_size=151937 is not divisible"),
    (
        ["--nodes", 1, "--mode", "colocated", "rollout.weight_sync=nccl"],
        "rollout.weight_sync=nccl cannot work colocated",
    ),
    (["--nodes", 2, "sglang.model_path=null"], "sglang.model_path is required"),
    # training memory: TP=1 on 8 GPUs of one node leaves every GPU 7.6B x (2 + 4 + 12 / 8) bytes
    # = 53 GiB, more than the 55.7 GiB left by SGLang's 0.3 once activations are added
    (
        ["--nodes", 1, "--mode", "colocated", "parallel.tensor=1", "data.max_prompt_tokens=2048"],
        "estimated training memory",
    ),
]


@pytest.mark.parametrize("args,reason", REFUSALS, ids=[r[1][:40] for r in REFUSALS])
def test_impossible_layouts_are_refused_with_one_line(qwen, capsys, args, reason):
    rc, out, err = cli(capsys, qwen, *args)
    assert rc == 2 and out == ""
    assert err.startswith("chord: launch plan: ") and err.count("\n") == 1 and reason in err, err


SEVENTY_B = """
model: {num_layers: 80, hidden_size: 8192, ffn_hidden_size: 29568, num_attention_heads: 64, num_query_groups: 8,
        vocab_size: 152064, max_seq_length: 4096, qkv_bias: true, tie_embeddings: false}
parallel: {tensor: 8, pipeline: 4}
rollout: {prompts_per_step: 32, samples_per_prompt: 8, max_new_tokens: 1024}
data: {max_prompt_tokens: 1024, max_response_tokens: 1024}
train: {micro_batch_size: 1}
sglang: {model_path: /models/qwen2.5-72b, tp_size: 1}
"""


def test_memory_refusals_for_a_72b_model(tmp_path, capsys):
    cfg = tmp_path / "72b.yaml"
    cfg.write_text(SEVENTY_B)
    params = memory.count_params(load_config(cfg).model)["total"]
    assert 72.0e9 < params < 73.0e9  # Qwen2.5-72B: 72.7B
    # TP=8 PP=4 on 4 training nodes fits; an SGLang server on one GPU needs 2 x 72.7B bytes = 135 GiB.
    rc, _, err = cli(capsys, cfg, "--nodes", 8, "--rollout-nodes", 4)
    assert rc == 2 and "the SGLang weights alone take 135.4 GiB per GPU at 1 GPU(s) per server" in err, err
    rc, out, _ = cli(capsys, cfg, "--nodes", 8, "--rollout-nodes", 4, "sglang.tp_size=4")
    assert rc == 0 and "TP=8 PP=4 VPP=- CP=1 DP=1" in out
    # TP=8 alone: 72.7B / 8 params per GPU x (2 + 4 + 12 / 4) bytes = 76 GiB before activations
    rc, _, err = cli(
        capsys, cfg, "--nodes", 4, "--mode", "colocated", "parallel.pipeline=1", "rollout.engine=inprocess"
    )
    assert rc == 2 and "estimated training memory" in err and "exceeds the 79.6 GiB available" in err, err


def test_config_errors_still_come_first(qwen, capsys):
    rc, _, err = cli(capsys, qwen, "--nodes", 2, "parallel.tensor=3")
    assert rc == 2 and err.startswith("chord: config error: command line: parallel.tensor: 3 does not divide")


# ----------------------------------------------------------------------------------------------
# script-env: what launch/common.sh evals
# ----------------------------------------------------------------------------------------------
def test_script_env_prints_shell_assignments_and_the_plan_file(qwen, tmp_path, capsys):
    plan_file = tmp_path / "plan.txt"
    rc = script_env.main(
        [
            "script-env",
            str(qwen),
            "train.steps=2",
            "--nodes",
            "4",
            "--gpus-per-node",
            "8",
            "--mode",
            "disaggregated",
            "--hosts",
            "a,b,c,d",
            "--port-base",
            "12000",
            "--plan-file",
            str(plan_file),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    env = dict(line.split("=", 1) for line in out.splitlines())
    assert {
        k: env[k]
        for k in (
            "ROLLOUT_NODES",
            "TRAIN_NODES",
            "SERVERS_PER_NODE",
            "NUM_SERVERS",
            "ENGINE",
            "WEIGHT_SYNC",
            "SGLANG_GPUS_PER_SERVER",
        )
    } == {
        "ROLLOUT_NODES": "1",
        "TRAIN_NODES": "3",
        "SERVERS_PER_NODE": "4",
        "NUM_SERVERS": "4",
        "ENGINE": "sglang",
        "WEIGHT_SYNC": "nccl",
        "SGLANG_GPUS_PER_SERVER": "2",
    }
    # values are shell-quoted; the server args round-trip through the shell
    args = shlex.split(shlex.split(env["SGLANG_SERVER_ARGS"])[0])
    assert args == ["--model-path", "/models/qwen2.5-7b", "--tp-size", "2", "--mem-fraction-static", "0.3"]
    assert "--prometheus-port 12002" in shlex.split(env["ROUTER_ARGS"])[0]
    text = plan_file.read_text()
    assert "(this job: 12000)" in text and "http://a:12001" in text and "--master-addr=b" in text
    # the shell agrees
    sh = subprocess.run(
        ["bash", "-c", out + '\nprintf "%s\\n" "$NUM_SERVERS" $SGLANG_SERVER_ARGS'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sh.stdout.split()[:3] == ["4", "--model-path", "/models/qwen2.5-7b"]


def test_script_env_refusal_is_exit_2(qwen, capsys):
    rc = script_env.main(["script-env", str(qwen), "--nodes", "1", "--gpus-per-node", "8", "--mode", "disaggregated"])
    assert rc == 2 and "disaggregated mode needs a training node" in capsys.readouterr().err


def test_cpu_plan_skips_the_gpu_memory_check_and_says_so(tmp_path, capsys):
    rc = script_env.main(
        [
            "script-env",
            str(ROOT / "configs/demo.yaml"),
            "parallel.tensor=2",
            "--nodes",
            "1",
            "--gpus-per-node",
            "2",
            "--mode",
            "colocated",
            "--cpu",
            "--plan-file",
            str(tmp_path / "p.txt"),
        ]
    )
    assert rc == 0
    text = (tmp_path / "p.txt").read_text()
    assert "2 CPU processes" in text and "not checked: CPU run" in text
    assert "CHORD_CPU=1 sbatch --nodes=1 launch/colocated.sbatch" in text


def test_default_rollout_nodes():
    assert [lp.default_rollout_nodes(n) for n in (1, 2, 3, 4, 5, 8, 9, 16, 17)] == [1, 1, 1, 1, 2, 2, 3, 4, 5]
    assert all(lp.default_rollout_nodes(n) == max(1, math.ceil(n / 4)) for n in range(1, 100))


# ----------------------------------------------------------------------------------------------
# The scripts
# ----------------------------------------------------------------------------------------------
SCRIPTS = sorted(LAUNCH.glob("*.sbatch")) + sorted(LAUNCH.glob("*.sh"))


def test_the_expected_scripts_exist():
    names = {p.name for p in SCRIPTS}
    assert {
        "colocated.sbatch",
        "disaggregated.sbatch",
        "bench_kernels.sbatch",
        "env.sh",
        "common.sh",
        "sglang_node.sh",
        "train_node.sh",
    } <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_valid_bash(script):
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_never_kills_by_name(script):
    text = script.read_text()
    assert not re.search(r"\b(pkill|killall)\b", text), f"{script.name} kills processes by name"


def test_nccl_settings_live_in_env_sh_only():
    env = (LAUNCH / "env.sh").read_text()
    for var in (
        "NCCL_SOCKET_IFNAME",
        "NCCL_IB_HCA",
        "NCCL_IB_TIMEOUT",
        "CUDA_DEVICE_MAX_CONNECTIONS",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING",
    ):
        assert var in env, var
    for script in SCRIPTS:
        if script.name != "env.sh":
            assert not re.search(r"\b(NCCL_\w+|CUDA_DEVICE_MAX_CONNECTIONS)=", script.read_text()), script.name


def test_sbatch_scripts_source_env_sh_and_group_settings():
    for name in ("colocated.sbatch", "disaggregated.sbatch", "bench_kernels.sbatch"):
        text = (LAUNCH / name).read_text()
        assert 'source "$CHORD_ROOT/launch/env.sh"' in text, name
        assert "# ---- paths" in text, name
    for name in ("colocated.sbatch", "disaggregated.sbatch"):
        text = (LAUNCH / name).read_text()
        assert text.index("# ---- config") < text.index("# ---- layout") < text.index("# ---- paths"), name


def test_ports_in_common_sh_match_the_plan():
    text = (LAUNCH / "common.sh").read_text()

    def value(name):
        return int(re.search(rf"^{name}=(\d+)", text, re.M).group(1))

    for name in (
        "PORT_SPAN",
        "TRAIN_PORT_OFFSET",
        "ROUTER_PORT_OFFSET",
        "ROUTER_METRICS_PORT_OFFSET",
        "SYNC_PORT_OFFSET",
        "SYNC_PORTS",
        "SERVER_PORT_OFFSET",
        "SERVER_NCCL_PORT_OFFSET",
    ):
        assert value(name) == getattr(lp, name), name
    assert "PORT_BASE=${PORT_BASE:-$((10000 + (SLURM_JOB_ID % 300) * PORT_SPAN))}" in text
    assert lp.PORT_BASE_FORMULA == "10000 + (SLURM_JOB_ID % 300) * 64"
    # every job's block stays below the ephemeral port range (32768+)
    assert 10000 + 299 * lp.PORT_SPAN + lp.PORT_SPAN <= 32768
    # the offsets do not overlap: master, router, metrics, 8 sync ports, 24 servers x (HTTP, NCCL)
    used = [lp.TRAIN_PORT_OFFSET, lp.ROUTER_PORT_OFFSET, lp.ROUTER_METRICS_PORT_OFFSET]
    used += range(lp.SYNC_PORT_OFFSET, lp.SYNC_PORT_OFFSET + lp.SYNC_PORTS)
    used += range(lp.SERVER_PORT_OFFSET, lp.SERVER_PORT_OFFSET + lp.MAX_SERVERS_PER_NODE)
    used += range(lp.SERVER_NCCL_PORT_OFFSET, lp.SERVER_NCCL_PORT_OFFSET + lp.MAX_SERVERS_PER_NODE)
    assert len(used) == len(set(used)) and max(used) < lp.PORT_SPAN and lp.MAX_SERVERS_PER_NODE == 24


def test_every_port_of_a_plan_lies_in_the_jobs_block(qwen):
    """Both modes, real host names and PORT_BASE (what script-env writes to plan.txt): every port
    in every command -- torchrun, router, metrics, each server's HTTP and NCCL port, the
    weight-sync range handed to the trainer -- is in PORT_BASE .. PORT_BASE + 63."""
    base = 12000
    for mode, nodes in (("disaggregated", 4), ("colocated", 2)):
        p = plan(qwen, nodes=nodes, gpus_per_node=8, mode=mode, hosts=[f"h{i}" for i in range(nodes)], port_base=base)
        text = "\n".join(c for role, c in p.commands.items() if role != "sbatch")
        ports = [int(x) for x in re.findall(r"(?:--[\w-]*port[= ]|:|\[|,)(\d{4,5})\b", text)]
        assert len(ports) > 10 and all(base <= x < base + lp.PORT_SPAN for x in ports), (mode, sorted(set(ports)))
        assert f"--nccl-port {base + 40}" in text
        if mode == "disaggregated":
            assert f"'rollout.sync_ports=[{base + 8},{base + 15}]'" in text
        # the env the script reads hands `chord train` the plan's overrides, word for word
        overrides = shlex.split(p.env["TRAIN_OVERRIDES"])
        trainer = shlex.split(next(c for role, c in p.commands.items() if role.startswith("trainer node 0")))
        assert trainer[trainer.index("train") + 3 : trainer.index("train") + 3 + len(overrides)] == overrides


def test_sglang_nccl_port_in_the_config_is_left_to_the_plan(qwen):
    p = plan(qwen, "sglang.nccl_port=29500", nodes=2, gpus_per_node=8, port_base=12000)
    servers = [c for role, c in p.commands.items() if role.startswith("sglang server")]
    assert all(c.count("--nccl-port") == 1 and "29500" not in c for c in servers)
