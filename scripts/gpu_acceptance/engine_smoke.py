"""Step 5: the bf16 engine at world size 1 (NCCL on the GPU; --dry-run: gloo on the CPU).

    python -m scripts.gpu_acceptance.engine_smoke --out DIR [--dry-run]   (or the file path)

A Qwen2-shaped tiny model (GQA 4 heads / 2 KV heads, QKV bias, untied embeddings, vocabulary
2048) built through the project's own MegatronEngine, with the distributed optimizer and
transformer-engine layers when `transformer_engine.pytorch` imports (else the local spec).
Checks, each recorded with its numbers (DIR/engine_smoke.json, see report.py):
  build                  what was built: layer spec, attention class, optimizer, dtype, device
  finite_steps           3 updates: finite loss and grad norm, every update applied
  logits_dtype_at_kernel the dtype the log-prob entry point receives (bf16: issue #14 item 1)
  packed_equals_plain    the first update with train.pack_sequences=true against plain rows
  resume_equals_uninterrupted  save after 2 updates, disturb, load into a fresh engine, update:
                         the same loss, weights and Adam state as the uninterrupted third update
  peak_memory            torch.cuda.max_memory_allocated over the run and over one update
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path

if not __package__:  # run as a file: make the `scripts` package importable
    sys.path.append(str(Path(__file__).resolve().parents[2]))

from scripts.gpu_acceptance import world1  # noqa: E402

VOCAB, ROWS, SEQ = 2048, 8, 64
MODEL = [
    "model.num_layers=4",
    "model.hidden_size=256",
    "model.ffn_hidden_size=512",
    "model.num_attention_heads=4",
    "model.num_query_groups=2",
    f"model.vocab_size={VOCAB}",
    "model.max_seq_length=128",
    "model.rotary_base=1000000.0",
    "model.qkv_bias=true",
    "model.tie_embeddings=false",
    "model.dtype=bf16",
]
TRAIN = [
    "parallel.distributed_optimizer=true",
    "train.micro_batch_size=4",
    "train.seed=5",
    "rollout.temperature=0.9",
    "optim.lr=0.001",
    "optim.grad_clip=1.0",
    "algorithm.mu.peak=0.3",
    "algorithm.mu.valley=0.3",
    "data.max_prompt_tokens=32",
    "data.max_response_tokens=64",
    "rollout.max_new_tokens=64",
]
PACK = ["train.pack_sequences=true", f"train.pack_length={SEQ}"]
# bf16 tolerances for plain vs packed rows: the same math in differently shaped matmuls.
PACK_TOL = {"loss_rel": 2e-2, "grad_norm_rel": 5e-2, "grads_rel_l2": 5e-2}


def config(rep, *extra):
    from chord_megatron.config import load_config

    impl = "local" if world1.te_pytorch_error() or rep.dry_run else "transformer_engine"
    return load_config(
        None,
        MODEL + TRAIN + [f"parallel.backend={world1.backend(rep.dry_run)}", f"model.transformer_impl={impl}", *extra],
    )


def make_batch(seed: int):
    """8 right-padded rows of 64 tokens, prompts of 4-11 and responses of 6-45 tokens (so that
    packing has something to pack), expert rows 1, 4 and 6; old_logp left to the engine."""
    import torch

    from chord_megatron.types import TrainBatch

    g = torch.Generator().manual_seed(1000 + seed)
    ids = torch.randint(1, VOCAB, (ROWS, SEQ), generator=g)
    mask = torch.zeros(ROWS, SEQ)
    for r in range(ROWS):
        prompt = 4 + int(torch.randint(0, 8, (1,), generator=g))
        resp = 6 + int(torch.randint(0, 40, (1,), generator=g))
        ids[r, prompt + resp :] = 0
        mask[r, prompt - 1 : prompt + resp - 1] = 1
    labels = torch.roll(ids, -1, 1)
    labels[:, -1] = 0
    is_expert = torch.zeros(ROWS, dtype=torch.bool)
    is_expert[[1, 4, 6]] = True
    adv = torch.randn(ROWS, generator=g) * (~is_expert)
    return TrainBatch(input_ids=ids, labels=labels, loss_mask=mask, is_expert=is_expert, advantages=adv, old_logp=None)


class KernelDtypes:
    """Wraps the log-prob entry point the step calls (train/step.py's token_logprobs) to record
    the dtype, device and shape of the logits it receives."""

    def __init__(self):
        from chord_megatron.train import step

        self.step, self.real, self.seen = step, step.token_logprobs, []

    def __enter__(self):
        def recording(logits, *args, **kwargs):
            self.seen.append((str(logits.dtype).removeprefix("torch."), logits.device.type, tuple(logits.shape)))
            return self.real(logits, *args, **kwargs)

        self.step.token_logprobs = recording
        return self

    def __exit__(self, *exc):
        self.step.token_logprobs = self.real


def weights(engine):
    return {n: t.detach().float().cpu().clone() for n, t in engine.export_weights()}


def grads(engine):
    from chord_megatron.train.weights import iter_full_tensors

    return {n: t.float().cpu().clone() for n, t in iter_full_tensors(engine.model, engine.par, what="grad")}


def adam_state(engine):
    """fp32 main parameters and Adam moments of every inner optimizer, flattened, and the Adam
    step count where the optimizer keeps it: per parameter (torch's AdamW) or per parameter
    group (transformer-engine's FusedAdam). Groups may carry a stale "step" next to AdamW's
    per-parameter ones (the checkpoint restores both), which AdamW never reads."""
    import torch

    mains, moments, param_steps, group_steps = [], [], set(), set()
    for opt in getattr(engine.optimizer, "chained_optimizers", [engine.optimizer]):
        for group in opt.optimizer.param_groups:
            if "step" in group:
                group_steps.add(float(group["step"]))
            for p in group["params"]:
                mains.append(p.detach().float().flatten().cpu())
                st = opt.optimizer.state.get(p, {})
                moments += [st[k].float().flatten().cpu() for k in ("exp_avg", "exp_avg_sq") if k in st]
                if "step" in st:
                    param_steps.add(float(st["step"]))
    return torch.cat(mains), torch.cat(moments), sorted(param_steps or group_steps)


def rel_l2(a: dict, b: dict) -> float:
    num = sum(float((a[n] - b[n]).double().pow(2).sum()) for n in b)
    den = sum(float(b[n].double().pow(2).sum()) for n in b)
    return math.sqrt(num / max(den, 1e-30))


def max_abs(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in b)


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def run(rep) -> None:
    import torch

    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.train.model import unwrap

    state = {}
    with rep.check("build"):
        t0 = time.monotonic()
        cfg = config(rep)
        engine = MegatronEngine(cfg)
        gpt = unwrap(engine.model[0])
        inner = getattr(engine.optimizer, "chained_optimizers", [engine.optimizer])
        param_dtypes = sorted({str(p.dtype) for p in gpt.parameters()})
        state.update(cfg=cfg, engine=engine, W0=weights(engine))
        te_error = world1.te_pytorch_error()
        rep.record(
            "build",
            param_dtypes == ["torch.bfloat16"] and type(inner[0]).__name__ == "DistributedOptimizer",
            layer_spec=cfg.model.transformer_impl,
            transformer_engine_pytorch_error=te_error,
            attention=type(gpt.decoder.layers[0].self_attention.core_attention).__name__,
            params=sum(p.numel() for p in gpt.parameters()),
            param_dtypes=param_dtypes,
            optimizer=[type(o).__name__ for o in inner],
            adam=[type(o.optimizer).__name__ for o in inner],
            backend=engine.par.backend,
            device=str(engine.par.device),
            gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            torch=torch.__version__,
            seconds=round(time.monotonic() - t0, 2),
        )
    if "engine" not in state:
        return  # nothing else can run without a model

    with rep.check("finite_steps"):
        t0 = time.monotonic()
        engine = state["engine"]
        with KernelDtypes() as seen:
            state["kernel"] = seen.seen  # kept even if a step fails
            steps, step_seconds = [], []
            for s in range(3):
                t = time.monotonic()
                steps.append(engine.train_step(make_batch(s), s))
                step_seconds.append(
                    round(time.monotonic() - t, 3)
                )  # the first one compiles (GPU: fused SwiGLU, kernel)
                if s == 0:
                    state["plain"] = {"metrics": steps[0], "grads": grads(engine)}
        state["straight"] = {"metrics": steps[2], "weights": weights(engine), "adam": adam_state(engine)}
        keys = ("loss", "grad_norm", "lr", "update_successful")
        numbers = {k: [s[k] for s in steps] for k in keys}
        ok = all(
            math.isfinite(s["loss"])
            and math.isfinite(s["grad_norm"])
            and s["grad_norm"] > 0
            and s["update_successful"] == 1.0
            for s in steps
        )
        rep.record(
            "finite_steps",
            ok,
            **numbers,
            rl_tokens=steps[0]["rl_tokens"],
            sft_tokens=steps[0]["sft_tokens"],
            step_seconds=step_seconds,
            seconds=round(time.monotonic() - t0, 2),
        )

    with rep.check("logits_dtype_at_kernel"):
        seen = state["kernel"]
        dtypes = sorted({d for d, _, _ in seen})
        rep.record(
            "logits_dtype_at_kernel",
            bool(seen) and dtypes == ["bfloat16"],
            dtypes=dtypes,
            calls=len(seen),
            devices=sorted({dev for _, dev, _ in seen}),
            first_shape=list(seen[0][2]) if seen else None,
            expected="bfloat16",
            impl=state["cfg"].train.log_prob_impl,
            kernel="triton" if "cuda" in {dev for _, dev, _ in seen} else "chunked",
        )  # auto: triton on CUDA

    with rep.check("packed_equals_plain"):
        t0 = time.monotonic()
        packed = MegatronEngine(config(rep, *PACK), par=state["engine"].par, full_state_dict=state["W0"])
        m = packed.train_step(make_batch(0), 0)
        g = grads(packed)
        want = state["plain"]
        nums = dict(
            loss=m["loss"],
            loss_plain=want["metrics"]["loss"],
            loss_rel=rel(m["loss"], want["metrics"]["loss"]),
            grad_norm=m["grad_norm"],
            grad_norm_plain=want["metrics"]["grad_norm"],
            grad_norm_rel=rel(m["grad_norm"], want["metrics"]["grad_norm"]),
            grads_rel_l2=rel_l2(g, want["grads"]),
            micro_batches=m["micro_batches"],
            micro_batches_plain=want["metrics"]["micro_batches"],
            padding_frac=m["padding_frac"],
            padding_frac_plain=want["metrics"]["padding_frac"],
        )
        within = all(nums[k] <= tol for k, tol in PACK_TOL.items())
        del packed
        rep.record(
            "packed_equals_plain",
            within and nums["padding_frac"] < nums["padding_frac_plain"],
            **nums,
            tolerances=PACK_TOL,
            seconds=round(time.monotonic() - t0, 2),
        )

    with rep.check("resume_equals_uninterrupted"):
        t0 = time.monotonic()
        root = rep.out / "engine_smoke_ckpt"
        shutil.rmtree(root, ignore_errors=True)
        par = state["engine"].par
        first = MegatronEngine(state["cfg"], par=par, full_state_dict=state["W0"])
        for s in range(2):
            first.train_step(make_batch(s), s)
        first.save(str(root), {"next_step": 2})
        first.train_step(make_batch(9), 9)  # moves weights, Adam state and schedule past the checkpoint
        del first
        fresh = MegatronEngine(config(rep, "train.seed=99"), par=par)
        step, data_state = fresh.load(str(root))
        m = fresh.train_step(make_batch(2), 2)
        got_main, got_moments, got_steps = adam_state(fresh)
        want = state["straight"]
        want_main, want_moments, want_steps = want["adam"]
        w = weights(fresh)
        nums = dict(
            loaded_step=step,
            data_state=data_state,
            loss=m["loss"],
            loss_uninterrupted=want["metrics"]["loss"],
            loss_rel=rel(m["loss"], want["metrics"]["loss"]),
            grad_norm_rel=rel(m["grad_norm"], want["metrics"]["grad_norm"]),
            weights_max_abs=max_abs(w, want["weights"]),
            main_params_max_abs=float((got_main - want_main).abs().max()),
            adam_moments_max_abs=float((got_moments - want_moments).abs().max()),
            adam_steps=got_steps,
            adam_steps_uninterrupted=want_steps,
            bit_exact=bool(
                m["loss"] == want["metrics"]["loss"]
                and all(torch.equal(w[n], want["weights"][n]) for n in w)
                and torch.equal(got_main, want_main)
                and torch.equal(got_moments, want_moments)
            ),
        )
        # Same device, same kernels: exact is expected; the bounds leave room only for
        # non-deterministic reductions, far below what a lost Adam state or step count moves.
        ok = (
            step == 2
            and nums["loss_rel"] <= 1e-5
            and nums["main_params_max_abs"] <= 1e-6
            and nums["adam_moments_max_abs"] <= 1e-6
            and got_steps == want_steps
        )
        del fresh
        shutil.rmtree(root, ignore_errors=True)
        rep.record("resume_equals_uninterrupted", ok, **nums, seconds=round(time.monotonic() - t0, 2))

    with rep.check("peak_memory"):
        run_peak = world1.peak_memory()
        step_peak = {"peak_allocated_bytes": None}
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            state["engine"].train_step(make_batch(3), 3)
            torch.cuda.synchronize()
            step_peak = world1.peak_memory()
        logits_bytes = 4 * SEQ * VOCAB * 2  # one micro-batch's bf16 logits [4, 64, 2048]
        ok = run_peak["peak_allocated_bytes"] is None or run_peak["peak_allocated_bytes"] > 0
        rep.record(
            "peak_memory",
            ok,
            run_peak_allocated_bytes=run_peak["peak_allocated_bytes"],
            run_peak_reserved_bytes=run_peak["peak_reserved_bytes"],
            one_update_peak_allocated_bytes=step_peak["peak_allocated_bytes"],
            micro_batch_bf16_logits_bytes=logits_bytes,
            note=None if torch.cuda.is_available() else "no CUDA (dry run): not measured",
        )


def main() -> None:
    world1.main("engine_smoke", __doc__.splitlines()[0], run)


if __name__ == "__main__":  # dist-checkpointing may start processes: keep the guard
    main()
