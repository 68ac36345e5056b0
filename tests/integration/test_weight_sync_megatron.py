"""Megatron -> HF weight sync, end to end on CPU: a real megatron-core GPTModel (the trainer's
MegatronEngine, local spec, TP=1) exports its weights, weight_sync.convert renames and re-lays
them, the in-process HF engine loads them, samples, and the trainer scores the samples.

The served log-probs must equal the trainer's (within 1e-5, fp32) at a temperature != 1, for
Qwen2 with tied embeddings and QKV bias and for Llama with untied embeddings; after one
optimiser step and a re-sync they must follow the new weights. The Megatron part runs in a
child process because it initialises torch.distributed for the whole process.
"""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _child() -> dict:
    import torch

    from chord_megatron.config import load_config
    from chord_megatron.data import ExpertRow
    from chord_megatron.data.batch import build_train_batch
    from chord_megatron.rollout.engine import SamplingParams
    from chord_megatron.rollout.inprocess import InProcessEngine, build_hf_model
    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.weight_sync.convert import Layout, hf_to_megatron, megatron_to_hf

    results = {}
    prompts = [[3, 4, 5, 6], [7, 8, 9], [10, 11]]
    for tied in (True, False):
        cfg = load_config(
            None,
            [
                f"model.tie_embeddings={str(tied).lower()}",
                f"model.qkv_bias={str(tied).lower()}",
                "rollout.temperature=0.8",
                "train.micro_batch_size=8",
                "optim.lr=0.01",
            ],
        )
        layout = Layout.from_model_config(cfg.model)
        trainer = MegatronEngine(cfg)
        rollout = InProcessEngine(build_hf_model(cfg.model, seed=12345))  # different random weights
        sp = SamplingParams(max_new_tokens=10, temperature=0.8, seed=1)

        def sync(version):
            meg = [(n, t.detach().clone()) for n, t in trainer.export_weights()]
            hf = list(megatron_to_hf(meg, layout))
            rollout.update_weights(hf, version)
            back = dict(hf_to_megatron(hf, layout))
            exact = len(back) == len(meg) and all(torch.equal(back[n], t) for n, t in meg)
            return {n for n, _ in hf}, exact

        def mismatch(rs):
            batch = build_train_batch(rs, torch.zeros(len(rs)), [], pad_id=0)
            return trainer.logprob_mismatch(batch)["logp_mismatch_max"]

        before_names = set(dict(rollout.model.named_parameters()))
        names, exact = sync("1")
        rs1 = rollout.generate(prompts, 2, sp)
        gap1 = mismatch(rs1)
        expert = [ExpertRow(prompt_ids=p, response_ids=list(range(20, 28))) for p in prompts]
        trainer.train_step(build_train_batch([], torch.zeros(0), expert, pad_id=0), 0, mu=1.0)
        stale = mismatch(rs1)  # old rollouts against the updated trainer
        sync("2")
        rs2 = rollout.generate(prompts, 2, sp)
        results["tied" if tied else "untied"] = {
            "covers_all_params": names == before_names,
            "round_trip_exact": exact,
            "gap_after_sync": gap1,
            "gap_stale": stale,
            "gap_after_resync": mismatch(rs2),
            "versions": sorted({r.weight_version for r in rs2}),
        }
    return results


def test_megatron_weights_served_by_hf_engine_match_trainer_logprobs():
    pytest.importorskip("megatron.core")
    pytest.importorskip("transformers")
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind, r in results.items():
        assert r["covers_all_params"] and r["round_trip_exact"], (kind, r)
        assert r["gap_after_sync"] < 1e-5, (kind, r)
        assert r["gap_stale"] > 1e-3, (kind, r)  # the optimiser step really changed the policy ...
        assert r["gap_after_resync"] < 1e-5, (kind, r)  # ... and the re-sync carried it over
        assert r["versions"] == ["2"]


if __name__ == "__main__":
    print(json.dumps(_child()))
