"""Step 6: a random tiny Qwen2 from transformers, through the project's HF import, against transformers.

    python -m scripts.gpu_acceptance.hf_parity --out DIR [--dry-run]   (or the file path)

The checkpoint is made on the spot (config from code, no hub; every weight drawn at random, so
a tensor in the wrong place shows): GQA 4 / 2 heads, QKV bias, untied embeddings, vocabulary
1024. It is loaded with `hf.weights.hf_state_dict` (model.hf_path) into MegatronEngine at world size
1 (NCCL on the GPU; --dry-run: gloo on the CPU). Checks (DIR/hf_parity.json, see report.py):
  logprobs_fp32          engine.compute_logprobs vs transformers' fp32 forward: max |gap| <= 1e-4
  export_round_trip      export_weights -> export_hf: the source checkpoint's very tensors
  logprobs_bf16          the bf16 engine vs the fp32 truth, no further off than transformers' own
                         bf16 forward is (3x its gap, plus a small floor)
  export_round_trip_bf16 the bf16 engine exports the source tensors rounded to bf16, exactly
  export_from_checkpoint the `chord export-hf` path: one update, save a training checkpoint,
                         run_export_hf -> exactly the trained weights
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from pathlib import Path

if not __package__:  # run as a file: make the `scripts` package importable
    sys.path.append(str(Path(__file__).resolve().parents[2]))

from scripts.gpu_acceptance import world1  # noqa: E402

VOCAB, ROWS, SEQ = 1024, 4, 48
FP32_TOL = 1e-4
BF16_RATIO, BF16_FLOOR = 3.0, 2e-2  # allowed: BF16_RATIO x transformers' own bf16 gap + BF16_FLOOR


def make_checkpoint(folder: Path):
    """A random Qwen2 saved as safetensors; returns the fp32 model (eval mode, on the CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # transformers initialises biases to 0 and norm gains to 1: draw them too
        for name, p in model.named_parameters():
            p.copy_(
                (1.0 + 0.1 * torch.randn(p.shape, generator=g))
                if "norm" in name
                else 0.1 * torch.randn(p.shape, generator=g)
            )
    model.save_pretrained(str(folder))
    return model.eval()


def engine_config(rep, folder: Path, dtype: str):
    from chord_megatron.config import load_config, validate
    from chord_megatron.hf.config import model_config_from_hf

    impl = "local" if world1.te_pytorch_error() or rep.dry_run else "transformer_engine"
    cfg = load_config(
        None,
        [
            f"parallel.backend={world1.backend(rep.dry_run)}",
            "train.micro_batch_size=4",
            "data.max_prompt_tokens=16",
            "data.max_response_tokens=32",
            "rollout.max_new_tokens=32",
            "rollout.temperature=1.0",
            # Parity of the weights, not of the fusions (engine_smoke runs those):
            # the fused SwiGLU is torch.compile'd on the GPU, a compile per dtype
            # and per pass that this step's 45 s budget need not pay.
            "megatron.bias_activation_fusion=false",
        ],
    )
    # The model section is the checkpoint's, as `chord config from-hf FOLDER` prints it.
    model = model_config_from_hf(folder, dtype=dtype, transformer_impl=impl)
    cfg = dataclasses.replace(cfg, model=model)
    validate(cfg)
    return cfg


def hf_engine(rep, folder: Path, dtype: str):
    """(config, MegatronEngine) with the checkpoint's weights, read through model.hf_path."""
    from chord_megatron.hf.weights import hf_state_dict
    from chord_megatron.train.engine import MegatronEngine

    cfg = engine_config(rep, folder, dtype)
    return cfg, MegatronEngine(cfg, full_state_dict=hf_state_dict(cfg))


def make_batch():
    import torch

    from chord_megatron.types import TrainBatch

    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, VOCAB, (ROWS, SEQ), generator=g)
    labels = torch.roll(ids, -1, 1)
    mask = torch.ones(ROWS, SEQ)
    mask[:, -1] = 0  # the last position has no next token
    return TrainBatch(
        input_ids=ids,
        labels=labels,
        loss_mask=mask,
        is_expert=torch.zeros(ROWS, dtype=torch.bool),
        advantages=torch.zeros(ROWS),
        old_logp=None,
    )


def hf_logprobs(model, batch, dtype):
    """transformers' per-token log-probs of the labels, computed in fp32 from its `dtype` logits."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    m = copy.deepcopy(model).to(device=device, dtype=dtype)  # a copy: the source keeps its fp32 weights
    with torch.no_grad():
        logits = m(batch.input_ids.to(device)).logits.float()
    return logits.log_softmax(-1).gather(-1, batch.labels.to(device)[..., None]).squeeze(-1).cpu()


def gaps(logp, ref, mask) -> dict:
    d = (logp - ref).abs()[mask]
    return {"max": float(d.max()), "mean": float(d.mean())}


def same_tensors(got: dict, want: dict) -> dict:
    names = sorted(got) == sorted(want)
    differ = [
        n
        for n in want
        if n in got and not (got[n].dtype == want[n].dtype and __import__("torch").equal(got[n], want[n]))
    ]
    return {
        "same_names": names,
        "tensors": len(want),
        "differing": differ[:5],
        "missing": sorted(set(want) - set(got))[:5],
        "extra": sorted(set(got) - set(want))[:5],
    }


def run(rep) -> None:
    import torch

    from chord_megatron.commands.export_hf import run_export_hf
    from chord_megatron.hf.export import export_hf
    from chord_megatron.weight_sync.convert import Layout, megatron_to_hf
    from chord_megatron.weight_sync.disk import read_hf_checkpoint

    work = rep.out / "hf_parity_work"
    folder = work / "qwen2-tiny"
    folder.mkdir(parents=True, exist_ok=True)
    source = make_checkpoint(folder)
    source_sd = {n: t.detach().clone() for n, t in source.state_dict().items()}
    batch = make_batch()
    mask = batch.loss_mask.bool()
    ref = hf_logprobs(source, batch, torch.float32)
    state = {}

    with rep.check("logprobs_fp32"):
        t0 = time.monotonic()
        cfg, engine = hf_engine(rep, folder, "fp32")
        state.update(cfg32=cfg, engine32=engine)
        g = gaps(engine.compute_logprobs(batch), ref, mask)
        spread = float(ref[mask].std())
        # A spread of log-probs well above the tolerance: a wrong tensor cannot hide in noise.
        rep.record(
            "logprobs_fp32",
            g["max"] <= FP32_TOL and spread > 0.3,
            gap_max=g["max"],
            gap_mean=g["mean"],
            tolerance=FP32_TOL,
            ref_logp_std=spread,
            ref_logp_mean=float(ref[mask].mean()),
            tokens=int(mask.sum()),
            layer_spec=cfg.model.transformer_impl,
            device=str(engine.par.device),
            seconds=round(time.monotonic() - t0, 2),
        )

    with rep.check("export_round_trip"):
        out = export_hf(state["engine32"].export_weights(), state["cfg32"], work / "export-fp32")
        r = same_tensors(read_hf_checkpoint(out), source_sd)
        rep.record("export_round_trip", r["same_names"] and not r["differing"], **r)

    with rep.check("logprobs_bf16"):
        t0 = time.monotonic()
        cfg, engine = hf_engine(rep, folder, "bf16")
        state.update(cfg16=cfg, engine16=engine)
        mine = gaps(engine.compute_logprobs(batch), ref, mask)
        theirs = gaps(hf_logprobs(source, batch, torch.bfloat16), ref, mask)
        allowed = {k: BF16_RATIO * theirs[k] + BF16_FLOOR for k in ("max", "mean")}
        ok = all(mine[k] <= allowed[k] for k in allowed)
        rep.record(
            "logprobs_bf16",
            ok,
            gap_max=mine["max"],
            gap_mean=mine["mean"],
            transformers_bf16_gap_max=theirs["max"],
            transformers_bf16_gap_mean=theirs["mean"],
            allowed_max=allowed["max"],
            allowed_mean=allowed["mean"],
            param_dtype=str(next(engine.model[0].parameters()).dtype),
            seconds=round(time.monotonic() - t0, 2),
        )

    with rep.check("export_round_trip_bf16"):
        out = export_hf(state["engine16"].export_weights(), state["cfg16"], work / "export-bf16")
        r = same_tensors(read_hf_checkpoint(out), {n: t.to(torch.bfloat16) for n, t in source_sd.items()})
        rep.record("export_round_trip_bf16", r["same_names"] and not r["differing"], **r)

    with rep.check("export_from_checkpoint"):
        t0 = time.monotonic()
        engine, cfg = state.pop("engine32"), state["cfg32"]
        state.pop("engine16", None)
        # One SFT update first: it moves the weights off the source (and megatron-core cannot
        # save a distributed optimizer that has not stepped yet).
        sft = dataclasses.replace(batch, is_expert=torch.ones(ROWS, dtype=torch.bool))
        engine.train_step(sft, 0, mu=1.0)
        layout = Layout.from_model_config(cfg.model, cfg.megatron)
        trained = {n: t.detach().cpu().clone() for n, t in megatron_to_hf(engine.export_weights(), layout)}
        ckpt = engine.save(str(work / "ckpt"))
        del engine
        run_export_hf(cfg, ckpt, str(work / "export-ckpt"))  # builds its own engine, as `chord export-hf` does
        r = same_tensors(read_hf_checkpoint(work / "export-ckpt"), trained)
        moved = any(not torch.equal(trained[n], source_sd[n]) for n in source_sd)
        rep.record(
            "export_from_checkpoint",
            r["same_names"] and not r["differing"] and moved,
            **r,
            moved=moved,
            seconds=round(time.monotonic() - t0, 2),
        )


def main() -> None:
    world1.main("hf_parity", __doc__.splitlines()[0], run, needs=("transformers",))


if __name__ == "__main__":  # dist-checkpointing may start processes: keep the guard
    main()
