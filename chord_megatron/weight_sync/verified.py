"""Trainer -> rollout engine weight sync, timed and verified.

push(): every rank walks the engine's full tensors (a collective: TP shards are gathered and PP
stages walked); rank 0 converts them to Hugging Face names and hands them to the rollout engine.
A sync that "succeeded" can still serve wrong weights (tied embeddings, a missed layer), so
after every rollout.verify_every pushes the served log-probs are compared with the trainer's;
a non-finite log-prob, or a token-mean KL above rollout.verify_tolerance (precision-aware by
default), stops the run. Two ways, one statistic (check_served):

- check_step(), free: the next training step's forward scores every on-policy token the engine
  served from the pushed weights, before the update changes them (train/step.py reports the
  mismatch). It covers every push that a step with rollouts follows.
- verify(), a probe: the engine samples a fixed probe batch and the trainer scores it. Only at
  the first checked push of a process, every rollout.probe_every checked pushes, and where no training
  forward will look: before an SFT-only step, the last push (the final evaluation's), and every
  push under rollout.asynchronous (the next step trains on rollouts of the weights before).
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import torch

from ..config import Config
from ..data import seeding
from ..data.batch import build_train_batch
from ..errors import ChordError
from ..train.parallel import is_rank0, rank0_object
from .buckets import tensor_bytes


class SyncVerificationError(ChordError, RuntimeError):
    """The rollout engine serves log-probs that do not match the trainer's weights."""


class WeightSync:
    def __init__(
        self,
        engine,
        rollout,
        cfg: Config,
        *,
        probe_prompts: Sequence[Sequence[int]] = (),
        stop_token_ids: Sequence[int] = (),
        pad_id: int = 0,
        forward_checks: Callable[[int], bool] = lambda step: False,
    ):
        """`forward_checks(step)`: whether training step `step`'s forward scores tokens sampled
        from the weights pushed just before it, and so checks them (default: never; every
        check is a probe)."""
        self.engine, self.rollout, self.cfg = engine, rollout, cfg
        self.probe_prompts = [list(p) for p in probe_prompts]
        self.stop_token_ids = tuple(stop_token_ids)
        self.pad_id = pad_id
        self.forward_checks = forward_checks
        self.pushes = 0
        self.checks = 0
        self.unchecked: Optional[int] = None  # a pushed version the next step's forward must check

    @property
    def rank0(self) -> bool:
        return is_rank0()

    def push(self, version: int) -> Dict[str, float]:
        from .convert import Layout, megatron_to_hf

        t0 = time.perf_counter()
        nbytes = [0]
        named = self.engine.export_weights()
        if self.rank0:

            def counted(items: Iterable[Tuple[str, torch.Tensor]]) -> Iterator[Tuple[str, torch.Tensor]]:
                for name, t in items:
                    nbytes[0] += tensor_bytes(t)
                    yield name, t

            self.rollout.pause()
            try:
                self.rollout.update_weights(
                    counted(megatron_to_hf(named, Layout.from_model_config(self.cfg.model, self.cfg.megatron))),
                    str(version),
                )
            finally:
                self.rollout.resume()
        else:
            from .factory import peer_feed_from_config

            feed = peer_feed_from_config(self.cfg)  # the tensor transport needs every rank's GPU
            if feed is not None:
                feed(megatron_to_hf(named, Layout.from_model_config(self.cfg.model, self.cfg.megatron)))
            else:
                for _ in named:  # take part in the gathers
                    pass
        seconds = time.perf_counter() - t0
        self.pushes += 1
        metrics = {"sync/seconds": seconds, "sync/bytes_per_s": nbytes[0] / max(seconds, 1e-9)}
        r = self.cfg.rollout
        self.unchecked = None
        if r.verify_every and self.pushes % r.verify_every == 0:
            self.checks += 1
            periodic = bool(r.probe_every) and self.checks % r.probe_every == 0
            if self.checks == 1 or periodic or not self.forward_checks(version):
                t1 = time.perf_counter()
                metrics.update(self.verify(version))
                metrics["sync/probe_seconds"] = time.perf_counter() - t1
            else:
                self.unchecked = version
        return metrics

    def check_step(self, step: int, update: Mapping[str, float]) -> None:
        """The free check: after training step `step`, judge the served-vs-trainer mismatch its
        forward measured (`update`: MegatronEngine.train_step's metrics, the same on every rank)
        if the push before it is due a check."""
        if self.unchecked is None:
            return
        version, self.unchecked = self.unchecked, None
        if step != version or "logp_mismatch_kl" not in update:
            raise RuntimeError(
                f"weight sync {version} was left to step {step}'s forward, which measured no served log-probs"
            )
        check_served(
            update, verify_tolerance(self.cfg), f"step {step}, on the tokens served after weight sync {version}"
        )

    def verify(self, version: int) -> Dict[str, float]:
        """Served vs trainer log-probs over a probe batch sampled by the engine; see check_served."""
        from ..rollout.engine import SamplingParams
        from ..train.batching import on_policy_mask
        from ..train.metrics import logprob_mismatch

        batch = None
        if self.rank0:
            if not self.probe_prompts:
                raise ValueError("WeightSync.verify needs probe prompts")
            params = SamplingParams.from_config(
                self.cfg.rollout, stop_token_ids=self.stop_token_ids, seed=seeding.PROBE
            )
            rollouts = self.rollout.generate(self.probe_prompts, 2, params)
            batch = build_train_batch(rollouts, torch.zeros(len(rollouts)), [], pad_id=self.pad_id)
        batch = rank0_object(batch)  # the gloo object group: no GPU spins while rank 0 samples
        trainer = self.engine.compute_logprobs(batch)
        stats = logprob_mismatch(trainer, batch.rollout_logp, on_policy_mask(batch))
        check_served(stats, verify_tolerance(self.cfg), f"after weight sync {version}")
        return {"sync/verify_kl": stats["logp_mismatch_kl"], "sync/verify_max_gap": stats["logp_mismatch_max"]}


def verify_tolerance(cfg: Config) -> float:
    """rollout.verify_tolerance, or by precision: bf16 on either side (the trainer on GPU, any
    SGLang server) disagrees with itself at the 1e-4..1e-3 level in KL; fp32 against fp32 far less."""
    if cfg.rollout.verify_tolerance is not None:
        return cfg.rollout.verify_tolerance
    from ..train.model import resolve_dtype

    bf16 = resolve_dtype(cfg.model.dtype) != torch.float32 or cfg.rollout.engine == "sglang"
    return 1e-2 if bf16 else 1e-4


def check_served(stats: Dict[str, float], tolerance: float, when: str) -> None:
    """Raise SyncVerificationError unless the served log-probs match the trainer's: every token
    finite, and the token-mean KL (k3) within `tolerance` (see train.metrics.logprob_mismatch)."""
    if stats["logp_mismatch_nonfinite"]:
        raise SyncVerificationError(
            f"{when}: {stats['logp_mismatch_nonfinite']:.0f} of {stats['logp_mismatch_tokens']:.0f} probe tokens have "
            "a NaN or infinite log-prob on the rollout engine or the trainer"
        )
    if not stats["logp_mismatch_kl"] <= tolerance:
        raise SyncVerificationError(
            f"{when}: the rollout engine's log-probs differ from the trainer's by KL {stats['logp_mismatch_kl']:.3g} per "
            f"token (max gap {stats['logp_mismatch_max']:.3g}; rollout.verify_tolerance={tolerance:g}); the engine is "
            "not serving the trained weights"
        )
