"""`chord eval` (commands/eval.py) and `chord export-hf` (commands/export_hf.py) on a tiny model.

* avg@k of an HF checkpoint with the in-process engine: the summary line, the per-prompt file,
  and accuracy = the fraction of samples whose reward is 1 (recomputed from the responses);
* overlong responses: the loop's -1 unless the reward decides from the finish reason itself;
* a training checkpoint: run_export_hf writes exactly the trained weights, and run_eval with
  --checkpoint serves them (its greedy answers equal those of the exported folder, not the base's);
* training's rollouts, its evaluation and chord eval stop on the same ids.
"""

import json
from pathlib import Path

import pytest

from chord_megatron.rewards import register_reward, registered_rewards
from tests.support.hf_models import config_for, make_checkpoint


def probe_reward(prompt, response, metadata):
    """Deterministic in the response text: lets the test recompute every reward."""
    return 1.0 if len(response) % 2 == 0 else -0.5


if "eval_probe" not in registered_rewards():
    register_reward("eval_probe")(probe_reward)


def bench(tmp_path, n=4):
    path = tmp_path / "bench.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"what is {i} + {i}"}], "answer": str(2 * i)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def eval_config(folder, *extra):
    return config_for(
        folder,
        "data.reward=eval_probe",
        "rollout.max_new_tokens=6",
        "rollout.temperature=1.0",
        "train.eval_samples=3",
        *extra,
    )


def read_out(path):
    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return lines[:-1], lines[-1]["summary"]


def test_avg_at_k_of_an_hf_checkpoint(tmp_path, capsys):
    from chord_megatron.commands.eval import run_eval

    folder, _ = make_checkpoint(tmp_path / "m", "qwen2")
    cfg = eval_config(folder)
    assert run_eval(cfg, data=str(bench(tmp_path)), out=str(tmp_path / "res.jsonl")) == 0
    printed = capsys.readouterr().out
    rows, summary = read_out(tmp_path / "res.jsonl")
    assert len(rows) == 4 and summary["k"] == 3 and summary["samples"] == 12
    assert f"avg@3 accuracy {summary['accuracy']:.4f} on 4 prompts (12 samples)" in printed
    rewards = [
        probe_reward("", resp, {}) if fr != "length" else -1.0
        for r in rows
        for resp, fr in zip(r["responses"], r["finish_reasons"])
    ]
    assert [x for r in rows for x in r["rewards"]] == rewards
    assert summary["accuracy"] == pytest.approx(sum(x == 1.0 for x in rewards) / 12)
    assert summary["accuracy"] == pytest.approx(sum(r["accuracy"] for r in rows) / 4)  # avg over prompts of avg@k
    assert rows[1]["prompt"] == "<|user|>what is 1 + 1<|end|><|assistant|>" and rows[1]["answer"] == "2"
    assert all(len(r["responses"]) == 3 and all(t <= 6 for t in r["response_tokens"]) for r in rows)


def test_overlong_scoring():
    from chord_megatron.commands.eval import score_samples
    from chord_megatron.data.jsonl import PromptRow
    from chord_megatron.types import Rollout

    class Tok:
        def decode(self, ids):
            return {1: "so \\boxed{4}", 2: "it is 4 but wait", 3: "\\boxed{5}"}[ids[0]]

    prompts = [PromptRow("p", [1], "4")]
    rs = [Rollout([1], [i], [0.0], reason) for i, reason in ((1, "length"), (2, "length"), (3, "stop"), (2, "stop"))]
    # math decides itself: a boxed answer before the cut counts; -1 only without one
    assert score_samples("math", prompts, rs, Tok(), workers=1) == [1.0, -1.0, 0.0, 1.0]
    # a reward that ignores the finish reason gets the loop's overlong score
    assert score_samples("exact_match", prompts, rs, Tok(), workers=1) == [-1.0, -1.0, 0.0, 1.0]


def _checkpoint_job(folder, root, bench_path):
    import torch

    from chord_megatron.commands.eval import run_eval
    from chord_megatron.commands.export_hf import run_export_hf
    from chord_megatron.data import ExpertRow
    from chord_megatron.data.batch import build_train_batch
    from chord_megatron.hf.weights import hf_state_dict
    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.weight_sync.disk import read_hf_checkpoint

    root = Path(root)
    # Greedy (top_p -> 0 keeps only the most likely token): the samples depend on the weights
    # alone, not on the seed, which is the checkpoint's step with --checkpoint and 0 without.
    cfg = eval_config(folder, "optim.lr=0.05", "rollout.top_p=1e-9")
    engine = MegatronEngine(cfg, full_state_dict=hf_state_dict(cfg))
    rows = [ExpertRow(list(range(3, 9)), list(range(10, 18)))] * 4
    engine.train_step(build_train_batch([], torch.zeros(0), rows, pad_id=0), 0, mu=1.0)
    trained = {n: t.clone() for n, t in engine.export_weights()}
    engine.save(str(root / "ckpt"), {"step": 1})
    del engine

    assert run_export_hf(cfg, str(root / "ckpt"), str(root / "exported")) == 0
    from chord_megatron.hf.weights import HFWeights
    from chord_megatron.weight_sync.convert import Layout

    back = HFWeights(root / "exported", Layout.from_model_config(cfg.model))
    exact = sorted(back) == sorted(trained) and all(torch.equal(back[n], trained[n]) for n in trained)
    files = sorted(p.name for p in (root / "exported").iterdir())

    run_eval(cfg, data=bench_path, k=2, checkpoint=str(root / "ckpt"), out=str(root / "ckpt.jsonl"))
    run_eval(
        cfg.replace(**{"model.hf_path": str(root / "exported")}), data=bench_path, k=2, out=str(root / "exp.jsonl")
    )
    run_eval(cfg, data=bench_path, k=2, out=str(root / "base.jsonl"))
    hf_names = sorted(read_hf_checkpoint(root / "exported"))
    return {"exact": exact, "files": files, "hf_names": hf_names}


def test_checkpoint_export_and_eval(tmp_path):
    from tests.support.dist_harness import run_job

    folder, _ = make_checkpoint(tmp_path / "m", "qwen2")
    r = run_job(_checkpoint_job, world=1, args=(str(folder), str(tmp_path), str(bench(tmp_path))), timeout=300)[0]
    assert r["exact"], r
    assert {"config.json", "generation_config.json", "tokenizer.json", "model.safetensors.index.json"} <= set(
        r["files"]
    )
    assert "lm_head.weight" not in r["hf_names"]  # tied: HF ties it on load
    ckpt, _ = read_out(tmp_path / "ckpt.jsonl")
    exported, _ = read_out(tmp_path / "exp.jsonl")
    base, _ = read_out(tmp_path / "base.jsonl")
    responses = lambda rows: [r["responses"] for r in rows]  # noqa: E731
    assert responses(ckpt) == responses(exported)  # --checkpoint served the trained weights ...
    assert responses(ckpt) != responses(base)  # ... not the checkpoint folder's


def test_avg_at_k_through_sglang(tmp_path, capsys):
    """rollout.engine=sglang: the same evaluation through the SGLang client and router, against
    fake 0.5.23 workers (no GPU); the fake samples tokens as a function of prompt and sample."""
    from chord_megatron.commands.eval import run_eval
    from tests.support import fake_sglang

    folder, _ = make_checkpoint(tmp_path / "m", "qwen2")
    workers = fake_sglang.launch_fake_workers(
        1, tmp_path, {0: ["--max-lifetime-s", "60", "--model-path", str(folder), "--vocab", "50"]}
    )
    try:
        cfg = eval_config(
            folder,
            "rollout.engine=sglang",
            f"rollout.server_urls=[{workers[0].url}]",
            f"train.output_dir={tmp_path / 'run'}",
        )
        assert run_eval(cfg, data=str(bench(tmp_path)), k=2, out=str(tmp_path / "res.jsonl")) == 0
    finally:
        workers[0].stop()
    rows, summary = read_out(tmp_path / "res.jsonl")
    assert summary["samples"] == 8 and all(len(r["responses"]) == 2 for r in rows)
    assert len({tuple(r["responses"]) for r in rows}) > 1  # each prompt got its own samples
    rewards = [
        probe_reward("", resp, {}) if fr != "length" else -1.0
        for r in rows
        for resp, fr in zip(r["responses"], r["finish_reasons"])
    ]
    assert [x for r in rows for x in r["rewards"]] == rewards
    assert "avg@2 accuracy" in capsys.readouterr().out


def test_training_and_chord_eval_stop_on_the_same_ids(tmp_path):
    """One decision (rollout/sampling.stop_token_ids) for training's rollouts, its evaluation and
    chord eval: the tokenizer's eos and every eos id of the model's generation_config.json."""
    from chord_megatron.data.hf_tokenizer import load_tokenizer
    from chord_megatron.rollout.engine import generate_complete
    from chord_megatron.rollout.factory import rollout_engine_from_config
    from chord_megatron.rollout.sampling import evaluation_params
    from chord_megatron.services import Services

    folder, _ = make_checkpoint(tmp_path / "m", "qwen2")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 6]}))  # 2: the tokenizer's
    data = bench(tmp_path, n=8)
    cfg = eval_config(
        folder,
        "data.task=jsonl",
        f"data.prompt_path={data}",
        "algorithm.expert_data_ratio=0",
        f"train.output_dir={tmp_path / 'run'}",
    )
    services = Services(cfg)
    tokenizer = load_tokenizer(cfg)
    assert tokenizer.eos_id == 2
    params = evaluation_params(cfg, tokenizer, 0)
    assert services.eos == services.sampling(0).stop_token_ids == params.stop_token_ids == (2, 6)
    # the engine ends a response at the extra id too (this seed draws it)
    with rollout_engine_from_config(cfg, eos_token_id=tokenizer.eos_id) as engine:
        rollouts, _ = generate_complete(engine, [p.prompt_ids for p in services.task.evaluation], 8, params)
    ended = [r.response_ids[-1] for r in rollouts if r.finish_reason == "stop"]
    assert 6 in ended and all(6 not in r.response_ids[:-1] and 2 not in r.response_ids[:-1] for r in rollouts)
