"""The CHORD step does not depend on the parallel layout, the micro-batch split or packing.

Jobs, run once per module:
  reference (1 process):  TP=PP=DP=1 from a seeded initialisation W0, one train_step per batch
                          kind and micro-batch size (1, 2 or 4 micro-batches), the same with
                          packed rows (1 or 2 model rows of 24 tokens per micro-batch), plus log-probs;
  layouts   (2 processes, gloo): the same weights W0 loaded into TP=2, PP=2, PP=2 x VPP=2,
                          DP=2 (with and without the distributed optimizer), CP=2 (with and
                          without), and packed rows under CP=2, TP=2, PP=2 and DP=2; the same steps;
  layouts4  (4 processes): TP=2 x CP=2, PP=2 x CP=2 with packed rows, and DP=2 x PP=2 with
                          packed rows whose pipelines run different numbers of micro-batches.
The TP=1 results are checked against an independent plain-torch re-computation
(tests/support/torch_oracle.py: model, CHORD loss and clipped Adam written out from scratch), and
every layout against TP=1: loss, metrics, full gradients and the parameters after the update.
Batch kinds: mixed rows (7 rows, so DP shards and micro-batches need padding rows), on-policy
rows only, expert rows only.
"""

import math

import pytest
import torch

from tests.support import torch_oracle as oracle
from tests.support.chord_step import KINDS, config, make_batch, one_step
from tests.support.dist_harness import run_job

pytestmark = pytest.mark.dist

# A large Adam eps makes the update proportional to the (clipped) gradient, so comparing
# parameters after a step also compares gradient magnitudes and the clipping factor.
PACK = ["train.pack_sequences=true", "train.pack_length=24"]
VARIANTS = {"tied": [], "untied_qkv_bias": ["model.tie_embeddings=false", "model.qkv_bias=true"]}
LAYOUTS = {
    "tp2": ["parallel.tensor=2"],
    # the fused Triton kernel (under the interpreter on CPU) instead of the chunked torch path
    "tp2_triton": ["parallel.tensor=2", "train.log_prob_impl=triton"],
    "pp2": ["parallel.pipeline=2"],
    "pp2_vpp2": ["parallel.pipeline=2", "parallel.virtual_pipeline=2"],
    "dp2": ["parallel.distributed_optimizer=false"],
    "dp2_distopt": [],
    # context parallelism: each row's positions split over 2 ranks (all-gather attention on CPU)
    "cp2": ["parallel.context=2", "parallel.distributed_optimizer=false"],
    "cp2_distopt": ["parallel.context=2"],
    # sequence packing: several rows per model row of 24 tokens, block-diagonal attention
    "cp2_packed": ["parallel.context=2", "parallel.distributed_optimizer=false", *PACK],
    "tp2_packed": ["parallel.tensor=2", *PACK],
    "pp2_packed": ["parallel.pipeline=2", *PACK],
    "dp2_packed": ["parallel.distributed_optimizer=false", *PACK],
}
SHARDED_GRADS = ("dp2_distopt", "cp2_distopt")  # the distributed optimizer reduces only this rank's slice
MICRO = {1: 7, 2: 4, 4: 2}  # number of micro-batches -> micro_batch_size for the 7-row batch
# where the on-policy step (old log-probs from the training forward) is also compared with TP=1
ON_POLICY_LAYOUTS = ("tp2", "pp2", "dp2_distopt", "cp2_packed")
REF_MICRO = 2  # the reference run compared with the layouts: 2 micro-batches of 4 rows
LAYOUT_MBS = 2  # rows per micro-batch in the layout runs (more micro-batches than the pipeline has stages)
TOL = dict(rtol=2e-5, atol=2e-6)
MU, TEMPERATURE = 0.3, 0.7


def _model_shapes(engine, batch):
    """What the model reads on this rank, and which attention the layers use."""
    from chord_megatron.train.model import unwrap

    layer = unwrap(engine.model[0]).decoder.layers[0]
    mbs = engine.micro_batches(batch)
    return {
        "attention": type(layer.self_attention.core_attention).__name__,
        "input": [tuple(mb.input_ids.shape) for mb in mbs],
        "rows": [mb.rows.rows for mb in mbs],
    }


def reference_job():
    """TP=PP=DP=1: W0 per variant, then every kind x micro-batch split."""
    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.train.parallel import init_parallel

    out = {}
    for variant, v_over in VARIANTS.items():
        par = init_parallel(config(*v_over).parallel, seed=7)
        W0 = {n: t.clone() for n, t in MegatronEngine(config(*v_over), par=par).export_weights()}
        out[variant] = {"W0": W0}
        for kind in KINDS:
            for n_micro, mbs in MICRO.items():
                res, engine = one_step(config(*v_over, f"train.micro_batch_size={mbs}"), par, W0, kind)
                out[variant][kind, n_micro] = res
            for n_pack_rows in (1, 2):  # packed rows per micro-batch
                cfg = config(*v_over, *PACK, f"train.micro_batch_size={n_pack_rows}")
                out[variant][kind, "packed", n_pack_rows] = one_step(cfg, par, W0, kind)[0]
        batch = make_batch("mixed", with_rollout_logp=True)
        engine = MegatronEngine(config(*v_over), par=par, full_state_dict=W0)
        out[variant]["logp"] = engine.compute_logprobs(batch)
        out[variant]["mismatch"] = engine.logprob_mismatch(batch)
        # As from a rollout engine, without old_logp: the training forward's own log-probs serve,
        # or (train.recompute_old_logp) a separate forward pass computes them first.
        batch.old_logp = None
        for recompute in (False, True):
            cfg = config(*v_over, f"train.recompute_old_logp={str(recompute).lower()}")
            engine = MegatronEngine(cfg, par=par, full_state_dict=W0)
            metrics = engine.train_step(batch, step=0)
            params = {n: t.clone() for n, t in engine.export_weights()}
            out[variant]["on_policy", recompute] = {"metrics": metrics, "params": params}
    return out


def layouts_job(W0s):
    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.train.parallel import init_parallel

    out = {}
    for variant, v_over in VARIANTS.items():
        for layout, l_over in LAYOUTS.items():
            cfg = config(*v_over, *l_over, f"train.micro_batch_size={LAYOUT_MBS}")
            par = init_parallel(cfg.parallel, seed=7)
            for kind in KINDS:
                res, engine = one_step(cfg, par, W0s[variant], kind)
                if layout in SHARDED_GRADS:
                    del res["grads"]
                out[variant, layout, kind] = res
            engine = MegatronEngine(cfg, par=par, full_state_dict=W0s[variant])
            out[variant, layout, "logp"] = engine.compute_logprobs(make_batch("mixed"))
            if variant == "tied" and layout in ON_POLICY_LAYOUTS:  # mismatch sums cross ranks and stages
                batch = make_batch("mixed", with_rollout_logp=True)
                batch.old_logp = None
                engine = MegatronEngine(cfg, par=par, full_state_dict=W0s[variant])
                metrics = engine.train_step(batch, step=0)
                out[variant, layout, "on_policy"] = {
                    "metrics": metrics,
                    "params": {n: t.clone() for n, t in engine.export_weights()},
                }
            out[variant, layout, "shapes"] = _model_shapes(engine, make_batch("mixed"))
    return out


@pytest.fixture(scope="module")
def ref():
    return run_job(reference_job, world=1)[0]


@pytest.fixture(scope="module")
def layouts(ref):
    per_rank = run_job(layouts_job, world=2, args=({v: ref[v]["W0"] for v in VARIANTS},))
    return per_rank


def _close(actual, expected, what, **tol):
    torch.testing.assert_close(actual, expected, **(tol or TOL), msg=lambda m: f"{what}: {m}")


def _oracle(ref, variant, kind):
    cfg = config(*VARIANTS[variant])
    batch = make_batch(kind)
    loss_kw = dict(mu=MU, temperature=TEMPERATURE, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    loss, grads = oracle.loss_and_grads(ref[variant]["W0"], batch, cfg.model, **loss_kw)
    params, norm = oracle.adam_step(ref[variant]["W0"], grads, lr=0.05, beta1=0.9, beta2=0.999, eps=0.1, max_norm=0.5)
    return loss, grads, params, norm


# ---- TP=1 against the independent re-computation --------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tp1_step_matches_plain_torch_oracle(ref, variant, kind):
    loss, grads, params, norm = _oracle(ref, variant, kind)
    got = ref[variant][kind, REF_MICRO]
    assert got["metrics"]["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-7)
    assert got["metrics"]["grad_norm"] == pytest.approx(norm, rel=1e-5)
    if kind != "sft_only":  # (expert-only gradients are small: mu x phi-weighted NLL)
        assert norm > 0.5, "the test should exercise gradient clipping"
    assert set(got["grads"]) == set(grads)
    clip = min(1.0, 0.5 / (norm + 1e-6))  # after the step, the grad buffers hold the clipped gradient
    for name in grads:
        _close(got["grads"][name], grads[name] * clip, f"grad {name}")
        _close(got["params"][name], params[name], f"param {name}")
    if kind == "rl_only":
        assert got["metrics"]["sft_loss"] == 0.0 and got["metrics"]["sft_tokens"] == 0
    if kind == "sft_only":
        assert got["metrics"]["grpo_loss"] == 0.0 and got["metrics"]["rl_tokens"] == 0


def test_tp1_metrics_are_whole_batch_token_means(ref):
    """Count-weighted combination of 2 micro-batches equals the metric of the whole batch."""
    batch = make_batch("mixed")
    W0 = ref["tied"]["W0"]
    lg = oracle.logits(W0, batch.input_ids, config().model).float() / TEMPERATURE
    logp_all = torch.log_softmax(lg, -1)
    logp = logp_all.gather(-1, batch.labels[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    mask = batch.loss_mask.bool()
    sft, rl = mask & batch.is_expert[:, None], mask & ~batch.is_expert[:, None]
    ratio = (logp - torch.nan_to_num(batch.old_logp)).exp()
    m = ref["tied"]["mixed", REF_MICRO]["metrics"]
    assert (m["rl_tokens"], m["sft_tokens"]) == (int(rl.sum()), int(sft.sum()))
    assert m["sft_nll"] == pytest.approx(float(-logp[sft].mean()), rel=1e-5)
    assert m["entropy_rl"] == pytest.approx(float(entropy[rl].mean()), rel=1e-5)
    assert m["entropy_sft"] == pytest.approx(float(entropy[sft].mean()), rel=1e-5)
    assert m["ratio_mean"] == pytest.approx(float(ratio[rl].mean()), rel=1e-5)
    assert m["mu"] == MU and m["micro_batches"] == REF_MICRO
    # 57 positions are needed (each row up to its last trained token); 2 micro-batches of 4 x 12
    # positions were computed (one inert padding row); 1 micro-batch of 7 x 12 without splitting.
    assert m["padding_frac"] == pytest.approx(1 - 57 / 96)
    assert ref["tied"]["mixed", 1]["metrics"]["padding_frac"] == pytest.approx(1 - 57 / 84)
    # packed into rows of 24: 4 model rows (2 micro-batches of 2) = 96 positions
    assert ref["tied"]["mixed", "packed", 2]["metrics"]["padding_frac"] == pytest.approx(1 - 57 / 96)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_microbatch_split_gives_the_same_update(ref, variant, kind):
    one = ref[variant][kind, 1]
    for n_micro in (2, 4):
        other = ref[variant][kind, n_micro]
        assert other["metrics"]["micro_batches"] == n_micro
        for key in ("loss", "grpo_loss", "sft_loss", "sft_nll", "clip_frac", "entropy_rl", "grad_norm"):
            assert other["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5, abs=1e-7), key
        for name in one["params"]:
            _close(other["grads"][name], one["grads"][name], f"{n_micro} micro-batches: grad {name}")
            _close(other["params"][name], one["params"][name], f"{n_micro} micro-batches: param {name}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_packed_rows_give_the_same_update(ref, variant, kind):
    """Packing 7 rows (6-11 tokens each) into rows of 24 tokens changes nothing but the
    summation order: block-diagonal attention, and RoPE depends only on relative positions."""
    one = ref[variant][kind, 1]
    for n_pack_rows in (1, 2):
        got = ref[variant][kind, "packed", n_pack_rows]
        assert got["metrics"]["micro_batches"] < 7 / n_pack_rows, "rows should share model rows"
        for key, value in one["metrics"].items():
            if key not in ("micro_batches", "padding_frac"):
                assert got["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
        for name in one["params"]:
            _close(got["grads"][name], one["grads"][name], f"packed x{n_pack_rows}: grad {name}")
            _close(got["params"][name], one["params"][name], f"packed x{n_pack_rows}: param {name}")


def test_compute_logprobs_and_mismatch_match_oracle(ref):
    batch = make_batch("mixed", with_rollout_logp=True)
    for variant in VARIANTS:
        lg = oracle.logits(ref[variant]["W0"], batch.input_ids, config(*VARIANTS[variant]).model)
        want = torch.log_softmax(lg / TEMPERATURE, -1).gather(-1, batch.labels[..., None]).squeeze(-1)
        got = ref[variant]["logp"]
        assert got.shape == (7, 12) and got.dtype == torch.float32
        mask = batch.loss_mask.bool()
        _close(got[mask], want[mask], f"{variant} logp")
        on_policy = mask & ~batch.is_expert[:, None]
        delta = (want - batch.rollout_logp).abs()[on_policy]
        mm = ref[variant]["mismatch"]
        assert mm["logp_mismatch_mean"] == pytest.approx(float(delta.mean()), rel=1e-5)
        assert mm["logp_mismatch_max"] == pytest.approx(float(delta.max()), rel=1e-5)
        assert mm["logp_mismatch_tokens"] == int(on_policy.sum())


@pytest.mark.parametrize("recompute", [False, True])
def test_missing_old_logp_means_a_strictly_on_policy_step(ref, recompute):
    for variant in VARIANTS:
        m = ref[variant]["on_policy", recompute]["metrics"]
        assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and m["approx_kl"] == pytest.approx(0.0, abs=1e-9)
        assert m["clip_frac"] == 0.0
        # the mismatch comes from the training forward, and equals a separate scoring pass's
        for key in ("logp_mismatch_mean", "logp_mismatch_max", "logp_mismatch_kl", "logp_mismatch_tokens"):
            assert m[key] == pytest.approx(ref[variant]["mismatch"][key], rel=1e-5, abs=1e-12), key


def test_old_logp_from_the_training_forward_gives_the_recomputed_update(ref):
    """No separate forward pass for the old log-probs: the same loss, metrics and update."""
    for variant in VARIANTS:
        free, recomputed = ref[variant]["on_policy", False], ref[variant]["on_policy", True]
        for key, value in recomputed["metrics"].items():
            assert free["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), f"{variant}: {key}"
        for name, w in recomputed["params"].items():
            _close(free["params"][name], w, f"{variant}: param {name}", rtol=1e-6, atol=1e-7)
        moved = [n for n, w in free["params"].items() if not torch.equal(w, ref[variant]["W0"][n])]
        assert len(moved) == len(free["params"]), f"{variant}: the step left some parameters unchanged"


@pytest.mark.parametrize("layout", ON_POLICY_LAYOUTS)
def test_on_policy_step_and_its_mismatch_match_tp1(ref, layouts, layout):
    want, got = ref["tied"]["on_policy", False], layouts[0]["tied", layout, "on_policy"]
    for key, value in want["metrics"].items():
        if key not in ("micro_batches", "padding_frac"):
            assert got["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-9), f"{layout}: {key}"
    assert layouts[1]["tied", layout, "on_policy"]["metrics"] == got["metrics"], f"{layout}: ranks disagree"
    for name, w in want["params"].items():
        _close(got["params"][name], w, f"{layout}: param {name}")


# ---- every layout against TP=1 --------------------------------------------------------------
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_layout_matches_tp1(ref, layouts, variant, layout):
    rank0, rank1 = layouts
    for kind in KINDS:
        want = ref[variant][kind, REF_MICRO]
        got = rank0[variant, layout, kind]
        where = f"{variant}/{layout}/{kind}"
        # Sharding W0 into the layout and gathering it back is exact.
        for name, w in ref[variant]["W0"].items():
            assert torch.equal(got["loaded"][name], w), f"{where}: {name} did not round-trip"
        for key, value in want["metrics"].items():
            if key in ("micro_batches", "padding_frac"):
                continue
            assert got["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), f"{where}: {key}"
        assert rank1[variant, layout, kind]["metrics"] == got["metrics"], f"{where}: ranks disagree"
        for name in want["params"]:
            if "grads" in got:
                _close(got["grads"][name], want["grads"][name], f"{where}: grad {name}")
            _close(got["params"][name], want["params"][name], f"{where}: param {name}")
            assert torch.equal(got["params"][name], rank1[variant, layout, kind]["params"][name])
        mask = make_batch("mixed").loss_mask.bool()
        _close(rank0[variant, layout, "logp"][mask], ref[variant]["logp"][mask], f"{where}: logp")


def test_layouts_ran_the_intended_schedules(layouts):
    got = layouts[0]
    # DP=2 halves the rows per rank: 4 padded rows / 2 = 2 micro-batches; otherwise 8 / 2 = 4.
    assert got["tied", "dp2", "mixed"]["metrics"]["micro_batches"] == 2
    assert got["tied", "tp2", "mixed"]["metrics"]["micro_batches"] == 4
    assert got["tied", "pp2_vpp2", "mixed"]["metrics"]["micro_batches"] == 4
    assert math.isfinite(got["tied", "pp2", "mixed"]["metrics"]["loss"])
    # Context parallelism: the all-gather attention, and each rank reads half of every row.
    for layout in ("cp2", "cp2_packed"):
        shapes = got["tied", layout, "shapes"]
        assert shapes["attention"] == "ContextParallelDotProductAttention", layout
    assert set(got["tied", "cp2", "shapes"]["input"]) == {(2, 6)}
    assert set(got["tied", "cp2_packed", "shapes"]["input"]) == {(2, 12)}
    assert got["tied", "tp2", "shapes"]["attention"] == "DotProductAttention"
    # Packing: 7 rows of 6-11 tokens fill 4 rows of 24 tokens, 2 per micro-batch.
    assert got["tied", "tp2_packed", "shapes"]["input"] == [(2, 24), (2, 24)]
    assert sum(got["tied", "tp2_packed", "shapes"]["rows"]) == 7


# ---- context parallelism combined with TP and PP (4 processes) -------------------------------
LAYOUTS_4 = {
    "tp2_cp2": ["parallel.tensor=2", "parallel.context=2", "parallel.distributed_optimizer=false"],
    "pp2_cp2_packed": ["parallel.pipeline=2", "parallel.context=2", *PACK],
    # one packed row per micro-batch: the DP ranks' rows fill 2 and 1 rows of 24 tokens, so the
    # two pipelines run different numbers of micro-batches in the same step
    "dp2_pp2_packed": ["parallel.pipeline=2", *PACK, "train.micro_batch_size=1"],
}


def layouts4_job(W0):
    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.train.parallel import init_parallel

    out = {}
    for layout, l_over in LAYOUTS_4.items():
        cfg = config(f"train.micro_batch_size={LAYOUT_MBS}", *l_over)
        par = init_parallel(cfg.parallel, seed=7)
        res, engine = one_step(cfg, par, W0, "mixed")
        out[layout] = res
        out[layout, "micro_batches"] = len(engine.micro_batches(make_batch("mixed")))
        out[layout, "logp"] = MegatronEngine(cfg, par=par, full_state_dict=W0).compute_logprobs(make_batch("mixed"))
        out[layout, "layout"] = (engine.par.tp, engine.par.pp, engine.par.cp, engine.par.dp)
    return out


@pytest.fixture(scope="module")
def layouts4(ref):
    return run_job(layouts4_job, world=4, args=(ref["tied"]["W0"],), timeout=300)


@pytest.mark.parametrize("layout", list(LAYOUTS_4))
def test_context_parallel_combined_with_tp_and_pp_matches_tp1(ref, layouts4, layout):
    want = ref["tied"]["mixed", REF_MICRO]
    expect_layout = {"tp2_cp2": (2, 1, 2, 1), "pp2_cp2_packed": (1, 2, 2, 1), "dp2_pp2_packed": (1, 2, 1, 2)}[layout]
    for rank, got in enumerate(layouts4):
        assert got[layout, "layout"] == expect_layout
        for key, value in want["metrics"].items():
            if key not in ("micro_batches", "padding_frac"):
                assert got[layout]["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), f"rank {rank}: {key}"
        for name in want["params"]:
            _close(got[layout]["params"][name], want["params"][name], f"{layout} rank {rank}: param {name}")
            if "grads" in got[layout] and layout == "tp2_cp2":
                _close(got[layout]["grads"][name], want["grads"][name], f"{layout}: grad {name}")
    mask = make_batch("mixed").loss_mask.bool()
    _close(layouts4[0][layout, "logp"][mask], ref["tied"]["logp"][mask], f"{layout}: logp")
    if layout == "dp2_pp2_packed":  # ranks 0 and 1 are DP ranks 0 and 1 of stage 0 (PP varies slowest)
        assert sorted({got[layout, "micro_batches"] for got in layouts4}) == [1, 2]
