"""A bf16 model hands the log-prob kernel bf16 logits, not Float16Module's fp32 copy (issue #14.1).

One process, a bf16 model on CPU (gloo), the same weights W0 and batch twice:
  bf16 path   what train/step.py does: the chunk is called with fp32_output=False;
  fp32 copy   the old behaviour: forward_kwargs patched away, so Float16Module casts the
              logits to fp32 before the kernel sees them.
The kernel's entry point (step.token_logprobs) is wrapped to record the dtype it receives, in
the train step and in the forward-only log-prob pass. The kernel computes in fp32 either way,
so both updates must agree within bf16 tolerance.
"""

import pytest
import torch

from tests.support.dist_harness import run_job

pytestmark = pytest.mark.dist

BF16 = ["model.dtype=bf16", "model.tie_embeddings=false", "model.qkv_bias=true", "train.micro_batch_size=4"]


def _run(cfg, par, W0, fp32_copy: bool):
    from chord_megatron.train import step as step_mod
    from chord_megatron.train.engine import MegatronEngine
    from tests.support import chord_step as T

    seen = []
    real_logprobs, real_kwargs = step_mod.token_logprobs, step_mod.forward_kwargs

    def recording(logits, *args, **kwargs):
        seen.append(logits.dtype)
        return real_logprobs(logits, *args, **kwargs)

    step_mod.token_logprobs = recording
    if fp32_copy:
        step_mod.forward_kwargs = lambda chunk: {}
    try:
        engine = MegatronEngine(cfg, par=par, full_state_dict=W0)
        metrics = engine.train_step(T.make_batch("mixed"), step=0)
        logp = engine.compute_logprobs(T.make_batch("mixed"))
    finally:
        step_mod.token_logprobs, step_mod.forward_kwargs = real_logprobs, real_kwargs
    params = {n: t.float().clone() for n, t in engine.export_weights()}
    return {"dtypes": seen, "metrics": metrics, "logp": logp, "params": params}


def _job():
    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.train.parallel import init_parallel
    from tests.support import chord_step as T

    cfg = T.config(*BF16)
    par = init_parallel(cfg.parallel, seed=7)
    W0 = {n: t.clone() for n, t in MegatronEngine(cfg, par=par).export_weights()}
    return {"W0": W0, "bf16": _run(cfg, par, W0, False), "fp32_copy": _run(cfg, par, W0, True)}


@pytest.fixture(scope="module")
def result():
    return run_job(_job, world=1)[0]


def test_logits_reach_the_kernel_in_bf16(result):
    assert all(t.dtype == torch.bfloat16 for t in result["W0"].values())
    # 2 micro-batches in the train step, 2 in the forward-only pass
    assert result["bf16"]["dtypes"] == [torch.bfloat16] * 4
    assert result["fp32_copy"]["dtypes"] == [torch.float32] * 4  # what Float16Module does by default


def test_bf16_logits_give_the_update_of_the_fp32_copy(result):
    new, old = result["bf16"], result["fp32_copy"]
    for key in ("loss", "grpo_loss", "sft_loss", "grad_norm", "entropy_rl"):
        assert new["metrics"][key] == pytest.approx(old["metrics"][key], rel=1e-2, abs=1e-4), key
    mask = torch.ones_like(new["logp"], dtype=torch.bool)
    torch.testing.assert_close(new["logp"][mask], old["logp"][mask], rtol=0, atol=2e-2)
    moved = 0.0
    for name, p in old["params"].items():
        torch.testing.assert_close(new["params"][name], p, rtol=1e-2, atol=1e-3, msg=lambda m: f"{name}: {m}")
        moved = max(moved, float((p - result["W0"][name].float()).abs().max()))
    assert moved > 1e-2, "the step should move the weights (lr 0.05) for the comparison to mean something"
