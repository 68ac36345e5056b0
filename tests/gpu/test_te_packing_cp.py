"""Sequence packing and context parallelism on transformer-engine attention (GPU only).

On CPU both run through Megatron's local attention (a block-diagonal mask, and the all-gather
stand-in of train/cp_attention.py) and are tested in tests/dist/test_train_layouts.py. On a GPU
with transformer-engine, packed rows travel in the THD format and context parallelism is TE's
own; these tests hold them to the same standard: the same update as plain rows on one rank.
Skipped, and reported as skipped, without CUDA and transformer-engine (CP: without 2 GPUs).
"""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.dist]

TE = ["model.transformer_impl=transformer_engine", "model.dtype=fp32", "train.micro_batch_size=2"]
TOL = dict(rtol=1e-4, atol=1e-5)  # fused attention kernels reorder fp32 sums


def _job(overrides, W0):
    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.train.parallel import init_parallel
    from tests.support import chord_step as T

    cfg = T.config(*TE, *overrides)
    par = init_parallel(cfg.parallel, seed=7)
    if W0 is None:
        W0 = {n: t.clone().cpu() for n, t in MegatronEngine(cfg, par=par).export_weights()}
    out = {"W0": W0}
    for kind in T.KINDS:
        res, _ = T.one_step(cfg, par, W0, kind)
        out[kind] = {"metrics": res["metrics"], "params": {n: t.cpu() for n, t in res["params"].items()}}
    out["logp"] = MegatronEngine(cfg, par=par, full_state_dict=W0).compute_logprobs(T.make_batch("mixed"))
    return out


def _compare(got, want):
    from tests.support import chord_step as T

    for kind in T.KINDS:
        for key in ("loss", "grpo_loss", "sft_loss", "grad_norm"):
            assert got[kind]["metrics"][key] == pytest.approx(want[kind]["metrics"][key], rel=1e-4, abs=1e-6), key
        for name, w in want[kind]["params"].items():
            torch.testing.assert_close(got[kind]["params"][name], w, **TOL, msg=lambda m: f"{kind} {name}: {m}")
    mask = T.make_batch("mixed").loss_mask.bool()
    torch.testing.assert_close(got["logp"][mask], want["logp"][mask], **TOL)


@pytest.fixture(scope="module")
def plain():
    pytest.importorskip("transformer_engine")
    from tests.support.dist_harness import run_job

    return run_job(_job, world=1, args=([], None))[0]


def test_te_packed_rows_thd_match_plain_rows(plain):
    from tests.support.dist_harness import run_job

    got = run_job(_job, world=1, args=(["train.pack_sequences=true", "train.pack_length=24"], plain["W0"]))[0]
    _compare(got, plain)


def test_te_context_parallel_matches_one_rank(plain):
    if torch.cuda.device_count() < 2:
        pytest.skip("context parallelism needs 2 GPUs")
    from tests.support.dist_harness import run_job

    got = run_job(_job, world=2, args=(["parallel.context=2"], plain["W0"]))[0]
    _compare(got, plain)
