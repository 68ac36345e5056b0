"""Exact resume with an optimizer shaped like transformer-engine's FusedAdam (what megatron-core
picks on a GPU with TE): its step count lives in param_groups, not in per-parameter state as in
torch's AdamW, and its per-parameter state is just exp_avg / exp_avg_sq.

megatron-core is made to build and checkpoint the stand-in exactly as it does TE's FusedAdam
(its module flags for "TE present" set, its `Adam` symbols replaced, adam_w_mode passed). One 2-process job,
DP=2 with the distributed optimizer: 3 uninterrupted updates against 2, save, a disturbing
update, a fresh engine that loads the checkpoint, and the third update.
"""

import pytest
import torch

from tests.support.checkpoint_run import batch, config, weights
from tests.support.dist_harness import run_job

pytestmark = pytest.mark.dist


class GroupStepAdam(torch.optim.Optimizer):
    """AdamW with FusedAdam's bookkeeping: group["step"], state = {exp_avg, exp_avg_sq}."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, adam_w_mode=True):
        assert adam_w_mode
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, step=0))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            g["step"] += 1
            (b1, b2), t = g["betas"], g["step"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                p.mul_(1 - g["lr"] * g["weight_decay"])
                st["exp_avg"].lerp_(p.grad, 1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (st["exp_avg_sq"] / (1 - b2**t)).sqrt_().add_(g["eps"])
                p.addcdiv_(st["exp_avg"] / (1 - b1**t), denom, value=-g["lr"])


def _group_steps(engine):
    return [
        g["step"]
        for opt in getattr(engine.optimizer, "chained_optimizers", [engine.optimizer])
        for g in opt.optimizer.param_groups
    ]


def _job(root):
    import megatron.core.optimizer as mopt
    import megatron.core.optimizer.distrib_optimizer as dopt

    # What megatron-core 0.16.1 sets when transformer-engine imports (module flags it branches on).
    mopt.USING_PYTORCH_OPTIMIZER, mopt.Adam = False, GroupStepAdam
    dopt.Adam, dopt.HAVE_APEX_OR_TE, dopt.USING_TE_OPTIMIZER = GroupStepAdam, True, True
    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.train.parallel import init_parallel

    cfg = config()
    par = init_parallel(cfg.parallel, seed=cfg.train.seed)
    W0 = weights(MegatronEngine(cfg, par=par))
    straight = MegatronEngine(cfg, par=par, full_state_dict=W0)
    assert isinstance(
        straight.optimizer.chained_optimizers[0].optimizer
        if hasattr(straight.optimizer, "chained_optimizers")
        else straight.optimizer.optimizer,
        GroupStepAdam,
    )
    straight_metrics = [straight.train_step(batch(s), s) for s in range(3)]

    resumed = MegatronEngine(cfg, par=par, full_state_dict=W0)
    for s in range(2):
        resumed.train_step(batch(s), s)
    resumed.save(root, {"next_step": 2})
    resumed.train_step(batch(9), 9)  # disturbs weights, Adam state and its step count
    fresh = MegatronEngine(config("train.seed=99"), par=init_parallel(cfg.parallel, seed=99))
    fresh.load(root)
    steps_after_load = _group_steps(fresh)
    last = fresh.train_step(batch(2), 2)
    return {
        "straight": straight_metrics[-1],
        "resumed": last,
        "steps_after_load": steps_after_load,
        "straight_weights": weights(straight),
        "resumed_weights": weights(fresh),
        "straight_steps": _group_steps(straight),
        "resumed_steps": _group_steps(fresh),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_job(_job, world=2, args=(str(tmp_path_factory.mktemp("fused")),))


def test_group_step_count_is_restored(results):
    for r in results:
        assert set(r["steps_after_load"]) == {2}, r["steps_after_load"]
        assert r["resumed_steps"] == r["straight_steps"] and set(r["straight_steps"]) == {3}


def test_resume_with_fused_adam_shape_is_bit_exact(results):
    for r in results:
        for key in ("loss", "grad_norm", "lr"):
            assert r["resumed"][key] == r["straight"][key], key
        for name, w in r["straight_weights"].items():
            assert torch.equal(r["resumed_weights"][name], w), name
