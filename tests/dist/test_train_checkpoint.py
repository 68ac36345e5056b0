"""Checkpoints: exact resume with the distributed optimizer, and resharding of the weights.

One 2-process job (gloo):
  resume    DP=2 with the distributed optimizer (so Adam's state really is sharded): an
            uninterrupted run of 4 updates against a run that saves after 2, is disturbed
            (an extra update, RNG draws), is rebuilt from another seed and loads the checkpoint.
            Losses, metrics, weights, every rank's optimizer state and the RNG must be
            bit-identical; the checkpoint root must hold what keep_last says.
  reshard   a checkpoint written at TP=2 is loaded at PP=2, at DP=2 (TP=PP=1 replicas) and at
            CP=2, and one written at PP=2 is loaded at TP=2: the weights must come back
            exactly, and PP=2 and CP=2 then take the same step; CP=2 (with the distributed
            optimizer sharded over its 2 ranks) resumes bit-exactly from its own checkpoint;
            a `fully_reshardable` optimizer state written at DP=2 resumes at TP=2 and PP=2.
"""

import os

import pytest
import torch

from tests.support.checkpoint_run import batch, config, weights
from tests.support.dist_harness import run_job

pytestmark = pytest.mark.dist


def optimizer_snapshot(engine):
    """This rank's Adam state: (fp32 main param shard, its state) per parameter."""
    out = []
    for opt in getattr(engine.optimizer, "chained_optimizers", [engine.optimizer]):
        for group in opt.optimizer.param_groups:
            for p in group["params"]:
                state = opt.optimizer.state[p]
                out.append((p.detach().clone(), {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}))
    return out


def resume_part(root):
    import multiprocessing

    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.train.parallel import init_parallel

    cfg = config()  # world 2 -> DP=2, distributed optimizer on (the default)
    par = init_parallel(cfg.parallel, seed=cfg.train.seed)
    W0 = weights(MegatronEngine(cfg, par=par))

    straight = MegatronEngine(cfg, par=par, full_state_dict=W0)
    straight_metrics = [straight.train_step(batch(s), s) for s in range(4)]

    resumed = MegatronEngine(cfg, par=par, full_state_dict=W0)
    resumed_metrics = [resumed.train_step(batch(0), 0)]
    resumed.save(root, {"next_step": 1})  # named after engine.step = 1 update done
    resumed_metrics.append(resumed.train_step(batch(1), 1))
    rng_at_save = torch.get_rng_state()
    resumed.save(root, {"next_step": 2, "epoch": 0}, step=2)
    no_children = multiprocessing.active_children() == []
    listing_after_save = sorted(os.listdir(root))
    resumed.train_step(batch(9), 9)  # disturbs weights, Adam state and the LR schedule
    torch.rand(5)  # and the RNG

    fresh = MegatronEngine(config("train.seed=99"), par=init_parallel(cfg.parallel, seed=99))
    differs_before_load = any(not torch.equal(a, b) for a, b in zip(weights(fresh).values(), W0.values()))
    step, data_state = fresh.load(root)
    assert fresh.step == step
    rng_restored = torch.equal(torch.get_rng_state(), rng_at_save)
    resumed_metrics += [fresh.train_step(batch(s), s) for s in (2, 3)]
    fresh.save(root, {"next_step": 4}, step=4)
    return {
        "straight": straight_metrics,
        "resumed": resumed_metrics,
        "straight_weights": weights(straight),
        "resumed_weights": weights(fresh),
        "straight_optim": optimizer_snapshot(straight),
        "resumed_optim": optimizer_snapshot(fresh),
        "straight_sched": straight.scheduler.num_steps,
        "resumed_sched": fresh.scheduler.num_steps,
        "loaded": (step, data_state),
        "rng_restored": rng_restored,
        "differs_before_load": differs_before_load,
        "no_children": no_children,
        "listing_after_save": listing_after_save,
        "listing_final": sorted(os.listdir(root)),
    }


def reshard_part(root):
    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.train.parallel import init_parallel

    def engine(*overrides, seed):
        cfg = config(*overrides, f"train.seed={seed}")
        return MegatronEngine(cfg, par=init_parallel(cfg.parallel, seed=seed))

    tp2 = engine("parallel.tensor=2", seed=1)
    tp2.train_step(batch(0), 0)  # weights and optimizer no longer at their initial values
    saved_tp2 = weights(tp2)
    tp2.save(os.path.join(root, "tp2"), {"from": "tp2"}, step=1)

    pp2 = engine("parallel.pipeline=2", seed=2)
    pp2_loaded = pp2.load(os.path.join(root, "tp2"))
    at_pp2 = weights(pp2)
    pp2_metrics = pp2.train_step(batch(1), 1)  # trains on from the loaded weights
    saved_pp2 = weights(pp2)
    pp2.save(os.path.join(root, "pp2"), {}, step=2)

    dp2 = engine(seed=3)
    dp2.load(os.path.join(root, "tp2"))
    at_dp2 = weights(dp2)

    tp2_again = engine("parallel.tensor=2", seed=4)
    tp2_again.load(os.path.join(root, "pp2"))

    cp2 = engine("parallel.context=2", seed=5)  # context-parallel ranks hold replicas of the weights
    cp2.load(os.path.join(root, "tp2"))
    at_cp2 = weights(cp2)
    cp2_metrics = cp2.train_step(batch(1), 1)  # the same update as pp2's from the same state
    after_cp2 = weights(cp2)
    cp2.save(os.path.join(root, "cp2"), {}, step=2)  # and resumes exactly on its own layout
    cp2_next = cp2.train_step(batch(2), 2)
    cp2_resumed = engine("parallel.context=2", seed=6)
    cp2_resumed.load(os.path.join(root, "cp2"))
    cp2_resumed_next = cp2_resumed.train_step(batch(2), 2)
    # Adam's state across layouts: written fully_reshardable at DP=2 (distributed optimizer),
    # read at TP=2 and at CP=2 x ... (world 2); the next update must equal the writer's own.
    writer = engine("checkpoint.optimizer_format=fully_reshardable", seed=7)
    for s in range(2):
        writer.train_step(batch(s), s)
    writer.save(os.path.join(root, "full"), {}, step=2)
    writer_next = writer.train_step(batch(2), 2)
    across = {"writer_next": writer_next, "writer_final": weights(writer)}
    for name, over in (("tp2", ["parallel.tensor=2"]), ("pp2", ["parallel.pipeline=2"])):
        reader = engine(*over, seed=8)
        reader.load(os.path.join(root, "full"))
        across[name] = (reader.train_step(batch(2), 2), weights(reader))
    fresh = engine("parallel.tensor=2", seed=9)  # the control: the same weights, Adam restarted
    fresh.load(os.path.join(root, "full"), load_optimizer=False)
    across["fresh"] = (fresh.train_step(batch(2), 2), weights(fresh))
    return {
        "across": across,
        "at_cp2": at_cp2,
        "cp2_metrics": cp2_metrics,
        "after_cp2": after_cp2,
        "cp2_next": cp2_next,
        "cp2_resumed_next": cp2_resumed_next,
        "cp2_final": weights(cp2),
        "cp2_resumed_final": weights(cp2_resumed),
        "saved_tp2": saved_tp2,
        "at_pp2": at_pp2,
        "at_dp2": at_dp2,
        "pp2_loaded": pp2_loaded,
        "pp2_metrics": pp2_metrics,
        "saved_pp2": saved_pp2,
        "at_tp2_again": weights(tp2_again),
    }


def checkpoint_job(root):
    return {"resume": resume_part(os.path.join(root, "resume")), "reshard": reshard_part(os.path.join(root, "reshard"))}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_job(checkpoint_job, world=2, args=(str(tmp_path_factory.mktemp("ckpt")),))


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(results):
    for rank, r in enumerate(x["resume"] for x in results):
        assert r["differs_before_load"], "the rebuilt engine must start from other weights"
        assert r["loaded"] == (2, {"next_step": 2, "epoch": 0})
        assert len(r["resumed"]) == len(r["straight"]) == 4
        for step, (a, b) in enumerate(zip(r["straight"], r["resumed"])):
            assert a == b, f"rank {rank} step {step}: metrics differ\n{a}\n{b}"
        assert r["straight"][0]["lr"] == 0.0 and r["straight"][1]["lr"] == 0.01  # warmup, then decay
        assert r["straight"][3]["mu"] != r["straight"][0]["mu"]
        for name, w in r["straight_weights"].items():
            assert torch.equal(w, r["resumed_weights"][name]), f"rank {rank}: {name}"
        assert len(r["straight_optim"]) == len(r["resumed_optim"]) > 0
        for (pa, sa), (pb, sb) in zip(r["straight_optim"], r["resumed_optim"]):
            assert torch.equal(pa, pb)
            assert sa.keys() == sb.keys() == {"step", "exp_avg", "exp_avg_sq"}
            for key in sa:
                assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), f"rank {rank}: Adam {key}"
            assert float(sa["step"]) == 4.0
        assert r["straight_sched"] == r["resumed_sched"] == 4
        assert r["rng_restored"]


def test_distributed_optimizer_state_is_sharded_across_ranks(results):
    a, b = results[0]["resume"]["straight_optim"], results[1]["resume"]["straight_optim"]
    numel = lambda snap: sum(p.numel() for p, _ in snap)  # noqa: E731
    total = sum(w.numel() for w in results[0]["resume"]["straight_weights"].values())
    assert numel(a) + numel(b) == total and 0 < numel(a) < total


def test_checkpoint_root_is_atomic_and_pruned(results):
    r = results[0]["resume"]
    # After the second save: both checkpoints, the pointer, no temporary directory.
    assert r["listing_after_save"] == ["latest", "step_00000001", "step_00000002"]
    assert r["listing_final"] == ["latest", "step_00000002", "step_00000004"]  # keep_last=2
    assert r["no_children"], "saving must not start processes"


def test_weights_reshard_across_layouts(results):
    for rank, r in enumerate(x["reshard"] for x in results):
        assert r["pp2_loaded"] == (1, {"from": "tp2"})
        for name, w in r["saved_tp2"].items():
            assert torch.equal(r["at_pp2"][name], w), f"rank {rank}: TP2 -> PP2 {name}"
            assert torch.equal(r["at_dp2"][name], w), f"rank {rank}: TP2 -> DP2 (TP=PP=1) {name}"
        assert any(not torch.equal(r["saved_pp2"][n], w) for n, w in r["saved_tp2"].items())
        for name, w in r["saved_pp2"].items():
            assert torch.equal(r["at_tp2_again"][name], w), f"rank {rank}: PP2 -> TP2 {name}"
        assert torch.isfinite(torch.tensor(r["pp2_metrics"]["loss"]))
        for name, w in r["saved_tp2"].items():
            assert torch.equal(r["at_cp2"][name], w), f"rank {rank}: TP2 -> CP2 {name}"
        for key in ("loss", "grad_norm", "lr", "sft_nll"):
            assert r["cp2_metrics"][key] == pytest.approx(r["pp2_metrics"][key], rel=1e-5), key
        # Adam's first step from a fresh state moves each weight by about +-lr (1e-2) whatever
        # the gradient's size, so a near-zero gradient may round either way: 1 % of a step.
        for name, w in r["saved_pp2"].items():
            torch.testing.assert_close(r["after_cp2"][name], w, rtol=0, atol=1e-4)
        assert r["cp2_resumed_next"] == r["cp2_next"], f"rank {rank}: CP=2 resume"
        for name, w in r["cp2_final"].items():
            assert torch.equal(r["cp2_resumed_final"][name], w), f"rank {rank}: CP=2 resume {name}"


def test_optimizer_state_saved_fully_reshardable_resumes_on_other_layouts(results):
    """DP=2 writes; TP=2 and PP=2 read weights *and* Adam state: their next update equals the
    writer's. With Adam restarted instead (the control), it does not."""
    for rank, r in enumerate(x["reshard"]["across"] for x in results):
        want = r["writer_final"]
        for layout in ("tp2", "pp2"):
            metrics, final = r[layout]
            for key in ("loss", "grad_norm", "lr"):
                assert metrics[key] == pytest.approx(r["writer_next"][key], rel=1e-5), (rank, layout, key)
            for name, w in want.items():
                torch.testing.assert_close(
                    final[name], w, rtol=1e-5, atol=1e-6, msg=lambda m: f"{rank} {layout} {name}: {m}"
                )
        _, fresh = r["fresh"]
        assert max(float((fresh[n] - w).abs().max()) for n, w in want.items()) > 1e-3
