"""Hugging Face checkpoints into and out of the Megatron model at TP=2 and PP=2 (2 gloo processes).

One job: for a tiny random Qwen2 (QKV bias, tied), Qwen3 (q/k norm, head_dim != hidden/heads,
sharded) and Llama-3 (llama3 rope scaling, untied) checkpoint, each rank loads its shard of the
lazily read checkpoint through MegatronEngine(cfg, full_state_dict=...), then
  * the full logits (vocabulary shards gathered at TP=2; stage 0 -> stage 1 by hand at PP=2)
    equal transformers' within 1e-5;
  * export_weights -> export_hf writes exactly the source checkpoint's tensors.
TP=1 and the transformers round trip are tests/unit/test_hf_io.py.
"""

from pathlib import Path

import pytest
import torch

from tests.support.dist_harness import run_job
from tests.support.hf_models import FAMILIES, config_for, make_checkpoint

pytestmark = pytest.mark.dist

LAYOUTS = {"tp2": ["parallel.tensor=2"], "pp2": ["parallel.pipeline=2"]}
TOL = 1e-5


def _full_logits(engine, ids):
    """The whole vocabulary's logits on every rank (None where this rank's stage has none)."""
    import torch.distributed as dist

    from chord_megatron.train.model import unwrap

    par, gpt = engine.par, unwrap(engine.model[0])
    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        if par.pp > 1:
            peer = dist.get_global_rank(par.pp_group, 1 - par.pp_rank)
            if par.is_first_stage:
                hidden = gpt(ids, pos, None)  # [S, B, H]
                dist.send(hidden.contiguous(), dst=peer)
                return None
            hidden = torch.empty(ids.shape[1], ids.shape[0], gpt.config.hidden_size)
            dist.recv(hidden, src=peer)
            gpt.set_input_tensor(hidden)
        logits = gpt(ids, pos, None)
        if par.tp > 1:
            parts = [torch.empty_like(logits) for _ in range(par.tp)]
            dist.all_gather(parts, logits.contiguous(), group=par.tp_group)
            logits = torch.cat(parts, dim=-1)
    return logits


def _job(folders, ids, out_root):
    import torch.distributed as dist

    from chord_megatron.hf.export import export_hf
    from chord_megatron.hf.weights import hf_state_dict
    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.weight_sync.disk import read_hf_checkpoint

    results = {}
    for family, folder in folders.items():
        for layout, overrides in LAYOUTS.items():
            cfg = config_for(folder, *overrides)
            engine = MegatronEngine(cfg, full_state_dict=hf_state_dict(cfg))
            logits = _full_logits(engine, ids)
            out = Path(out_root) / f"{family}-{layout}"
            export_hf(engine.export_weights(), cfg, out, write=engine.par.rank == 0)
            dist.barrier()
            results[(family, layout)] = {
                "logits": logits,
                "exported": read_hf_checkpoint(out) if engine.par.rank == 0 else None,
            }
    return results


def test_hf_checkpoints_at_tp2_and_pp2(tmp_path):
    from safetensors.torch import load_file

    folders, refs, sources = {}, {}, {}
    ids = torch.randint(3, 60, (2, 24), generator=torch.Generator().manual_seed(3))
    for f in FAMILIES:
        folder, model = make_checkpoint(tmp_path / f, f, shards=(f == "qwen3"), seed=5, tokenizer=False)
        folders[f] = str(folder)
        with torch.no_grad():
            refs[f] = model(ids).logits
        sources[f] = {}
        for shard in folder.glob("*.safetensors"):
            sources[f].update(load_file(str(shard)))
    per_rank = run_job(_job, world=2, args=(folders, ids, str(tmp_path)), timeout=300)
    for f in FAMILIES:
        for layout in LAYOUTS:
            got = [r[(f, layout)]["logits"] for r in per_rank]
            holders = [g for g in got if g is not None]
            assert len(holders) == (2 if layout == "tp2" else 1), (f, layout)
            for logits in holders:
                gap = (logits - refs[f]).abs().max().item()
                assert gap < TOL, (f, layout, gap)
            exported = per_rank[0][(f, layout)]["exported"]
            assert sorted(exported) == sorted(sources[f]), (f, layout)
            for name, t in sources[f].items():
                assert torch.equal(exported[name], t), (f, layout, name)
