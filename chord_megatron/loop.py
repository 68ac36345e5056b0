"""The CHORD driver: generate -> reward -> train -> sync -> evaluate -> save, one step at a time.

Every rank of a job runs this loop; rank 0's part (rollouts, rewards, logs) sits behind the
verbs of services.Services, the Megatron engine's behind MegatronEngine's.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable, Dict, Optional

from .config import Config
from .memory_handover import release_rollout_memory, return_training_memory
from .metrics.progress import ProgressBar
from .metrics.table import logged
from .services import Services


def train(
    cfg: Config, *, resume: bool = False, progress: bool = True, stop: Optional[Callable[[int], bool]] = None
) -> Dict[str, float]:
    """Run (or resume) the CHORD loop of `cfg`; returns the last evaluation's metrics (rank 0).
    `stop(updates)`, asked after every step, ends the run early with a checkpoint of that step
    (Ctrl-C: stop.py).

    metrics.jsonl gets one record per update, `step` = its 0-based index (rollouts of the policy
    before the update, then the update's losses), and one record per evaluation, `step` = the
    number of updates applied (0 = the base model): both describe the same policy at a step.
    """
    from .demo.base_model import base_weights
    from .train.engine import MegatronEngine
    from .weight_sync.verified import WeightSync

    t, steps = cfg.train, cfg.train.steps
    ckpt_dir = str(cfg.checkpoint.dir or Path(t.output_dir) / "checkpoints")
    services = Services(cfg)
    engine = MegatronEngine(cfg, full_state_dict=base_weights(cfg, progress=progress))
    start, state = engine.load(ckpt_dir) if resume else (0, {})
    services.start(start, resume=resume, state=state)
    sync = WeightSync(
        engine,
        services.rollout,
        cfg,
        probe_prompts=services.probe_prompts,
        stop_token_ids=services.eos,
        pad_id=0,
        forward_checks=services.forward_checks,
    )

    def eval_due(updates: int) -> bool:
        return bool(t.eval_every) and (updates % t.eval_every == 0 or updates == steps)

    last_eval: Dict[str, float] = {}
    sync_metrics = sync.push(version=start)
    if eval_due(start):  # the base model, or re-done after a resume: it is seeded
        last_eval = services.evaluate(start)
    bar = ProgressBar(start, steps, enabled=progress and services.active)
    began = time.perf_counter()
    for step in range(start, steps):
        t0, updates = time.perf_counter(), step + 1
        sync_due = updates % cfg.rollout.sync_every == 0 or updates == steps
        data = services.collect(step)
        release_rollout_memory(cfg, services.rollout, sync_follows=sync_due)  # colocated SGLang
        update = engine.train_step(data.batch, step, mu=services.mu(step, data))
        return_training_memory(cfg)
        sync.check_step(step, update)  # were this step's rollouts served by the trained weights?
        # the step's phases (chord bench loop), and the sync that served this step's rollouts
        metrics = {**data.metrics, **logged(update), **engine.seconds, **sync_metrics}
        metrics.update(services.finish_ahead())  # the next batch's sampler is about to change
        if sync_due:
            sync_metrics = sync.push(version=updates)
        metrics["step/seconds"] = time.perf_counter() - t0
        metrics["train/tokens_per_s"] = float(data.batch.loss_mask.sum()) / metrics["step/seconds"]
        metrics["clock/seconds"] = time.perf_counter() - began
        # The step's record first, then the checkpoint that covers it: killed in between, the
        # run resumes from the previous checkpoint and writes the record again (the logger drops
        # records from the resumed step on). The other order loses the record for good.
        services.log(step, metrics)
        fault_point("between-record-and-checkpoint", step)
        stopping = stop is not None and stop(updates)
        if (cfg.checkpoint.save_every and updates % cfg.checkpoint.save_every == 0) or updates == steps or stopping:
            engine.save(ckpt_dir, {"step": updates, **services.state()}, step=updates)
        if eval_due(updates) and not stopping:  # a resumed run evaluates its first step again
            last_eval = services.evaluate(updates)
            metrics.update(last_eval)
        bar.update(metrics)
        if stopping:
            break
    bar.close()
    services.close()
    return last_eval


def fault_point(name: str, step: int) -> None:
    """A test-only kill switch: with CHORD_TEST_KILL=<name>:<step> in the environment the process
    SIGKILLs itself here, so that a test can kill a run between two writes deterministically
    (tests/e2e/test_resume_after_kill.py). Nothing else sets or reads the variable."""
    if os.environ.get("CHORD_TEST_KILL") == f"{name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
