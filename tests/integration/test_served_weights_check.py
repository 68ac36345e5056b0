"""The free served-weights check, end to end on CPU: a real Megatron trainer (local spec, TP=1),
the in-process HF engine, and WeightSync as the loop drives it (loop.py). After the first push
(probed), each push is judged by the next training step's forward alone, which scores every
token the engine served. A sync that leaves the engine on stale weights, or swaps two layers,
must stop the run at that step; a correct one must not. The Megatron part runs in a child
process because it initialises torch.distributed for the whole process.
"""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

BAD_VERSION = 3


def _child(sabotage: str) -> dict:
    import torch

    from chord_megatron.algo import group_advantages
    from chord_megatron.config import load_config
    from chord_megatron.data.batch import build_train_batch
    from chord_megatron.rollout.engine import SamplingParams
    from chord_megatron.rollout.inprocess import InProcessEngine, build_hf_model
    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.weight_sync.verified import SyncVerificationError, WeightSync

    cfg = load_config(None, ["rollout.temperature=0.8", "optim.lr=0.01", "train.micro_batch_size=16"])
    trainer = MegatronEngine(cfg)
    engine = InProcessEngine(build_hf_model(cfg.model, seed=99))  # other weights until the first push
    real_update = engine.update_weights

    def update_weights(named, version):
        named = list(named)
        if int(version) == BAD_VERSION and sabotage == "stale":
            return  # the sync "succeeds", the engine keeps the previous weights
        if int(version) == BAD_VERSION and sabotage == "swapped_layers":
            swap = {"model.layers.0.": "model.layers.1.", "model.layers.1.": "model.layers.0."}
            named = [
                (next((name.replace(a, b) for a, b in swap.items() if name.startswith(a)), name), t)
                for name, t in named
            ]
        real_update(named, version)

    engine.update_weights = update_weights
    prompts = [[3, 4, 5, 6], [7, 8, 9], [10, 11], [12, 13, 14]]
    sync = WeightSync(trainer, engine, cfg, probe_prompts=prompts[:2], forward_checks=lambda step: True)
    out = {"probed": [], "kl": {}, "stopped_at": None, "message": ""}
    if "sync/verify_kl" in sync.push(0):
        out["probed"].append(0)
    g = torch.Generator().manual_seed(0)
    for step in range(5):
        rollouts = engine.generate(prompts, 4, SamplingParams(max_new_tokens=8, temperature=0.8, seed=step))
        batch = build_train_batch(rollouts, group_advantages(torch.rand(16, generator=g), 4), [], pad_id=0)
        update = trainer.train_step(batch, step, mu=0.0)
        out["kl"][step] = update["logp_mismatch_kl"]
        try:
            sync.check_step(step, update)
        except SyncVerificationError as e:
            out["stopped_at"], out["message"] = step, str(e)
            break
        if "sync/verify_kl" in sync.push(step + 1):
            out["probed"].append(step + 1)
    return out


@pytest.mark.parametrize("sabotage", ["none", "stale", "swapped_layers"])
def test_the_training_forward_catches_wrong_served_weights(sabotage):
    pytest.importorskip("megatron.core")
    proc = subprocess.run([sys.executable, __file__, sabotage], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["probed"] == [0]  # the first push only: every later one is left to the training forward
    if sabotage == "none":
        assert r["stopped_at"] is None and max(r["kl"].values()) < 1e-8, r
    else:
        assert r["stopped_at"] == BAD_VERSION, r
        assert "not serving the trained weights" in r["message"], r
        assert all(r["kl"][str(s)] < 1e-8 for s in range(BAD_VERSION)), r
        assert r["kl"][str(BAD_VERSION)] > 1e-3, r


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1])))
