"""MegatronEngine: the few verbs the training loop needs, over a Megatron-core policy.

    engine = MegatronEngine(cfg)                 # joins torch.distributed, builds model + optimizer
    metrics = engine.train_step(batch, step)     # one CHORD update on a global TrainBatch
    logp = engine.compute_logprobs(batch)        # current policy's log-probs, [B, S]
    engine.save(dir, data_state); step, data_state = engine.load(dir)
    for name, tensor in engine.export_weights(): ...   # full tensors, Megatron names

Every rank of the job calls every verb with the same arguments (the same *global* batch on
all ranks: each data-parallel rank takes its own rows). Results are identical on all ranks.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import torch

from ..config import Config
from ..types import TrainBatch
from . import checkpoint as ckpt
from .batching import check_batch, count_tokens, on_policy_mask
from .metrics import logprob_mismatch
from .micro_batch import MicroBatch, build_micro_batches
from .model import build_model, use_transformer_engine
from .optim import build_optimizer, current_lr
from .packing import trained_lengths
from .parallel import ParallelState, init_parallel
from .step import LossSettings, chord_forward_backward, forward_logprobs
from .weights import iter_full_tensors, load_full_state_dict


class MegatronEngine:
    """Model chunks, optimizer and LR schedule of one rank, behind train/logprob/save verbs."""

    def __init__(
        self,
        cfg: Config,
        *,
        par: Optional[ParallelState] = None,
        full_state_dict: Optional[Mapping[str, torch.Tensor]] = None,
    ):
        """Build on the current torch.distributed world (initialised from torchrun's
        environment if needed). `full_state_dict`: start from these weights (Megatron names,
        see train/weights.py) instead of a random initialisation."""
        self.thd = _check_layout(cfg)
        self.cfg = cfg
        self.par = par or init_parallel(cfg.parallel, seed=cfg.train.seed)
        self.model = build_model(cfg, self.par)
        if full_state_dict is not None:
            load_full_state_dict(self.model, full_state_dict, self.par)
        self.optimizer, self.scheduler = build_optimizer(cfg, self.model, self.par)
        self.settings = LossSettings.from_config(cfg)
        # Updates done so far: the index of the next train_step, what save() records.
        self.step = 0
        self.seconds: Dict[str, float] = {}  # the last train_step's phases (loop metrics)

    # ------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------
    def mu_at(self, step: int) -> float:
        mu = self.cfg.algorithm.mu.at(step)
        if mu is None:
            raise ValueError("algorithm.mu.adaptive: the caller computes mu from rewards and passes mu=")
        return mu

    def train_step(self, batch: TrainBatch, step: int, *, mu: Optional[float] = None) -> Dict[str, float]:
        """One optimizer update on the global `batch` (the same on every rank).

        old_logp missing -> the step is strictly on-policy (ratio 1): the training forward's
        own log-probs, detached, serve as old_logp, or (train.recompute_old_logp) a forward-only
        pass computes them first; the update is the same. rollout_logp present -> the
        rollout/trainer mismatch (logp_mismatch_*) is reported, from the training forward. mu defaults to algorithm.mu's schedule at `step` (MuConfig.at).
        Returns metrics, identical on every rank: the chord_loss metrics (count-weighted over
        the whole batch), grad_norm, lr (the rate this update used), update_successful, and
        logp_mismatch_* when measurable.
        """
        check_batch(batch)
        if self.settings.chord_kwargs.get("tis_cap") is not None and batch.rollout_logp is None:
            raise ValueError("algorithm.tis_cap needs TrainBatch.rollout_logp")
        mu = self.mu_at(step) if mu is None else float(mu)
        t0 = time.perf_counter()
        if batch.old_logp is None and self.cfg.train.recompute_old_logp:
            batch = _with_old_logp(batch, self.compute_logprobs(batch))
        t1 = time.perf_counter()

        counts = count_tokens(batch)
        mbs = self.micro_batches(batch)
        lr = current_lr(self.optimizer)
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        metrics = chord_forward_backward(
            self.model, self.par, mbs, mu=mu, counts=counts, settings=self.settings, thd=self.thd
        )
        ok, grad_norm, _ = self.optimizer.step()
        if ok:
            self.scheduler.step(increment=1)
        self.step = step + 1
        # Wall-clock, this rank's: kept apart from the metrics, which are the same on every rank.
        self.seconds = {"old_logp/seconds": t1 - t0, "update/seconds": time.perf_counter() - t1}
        metrics.update(
            grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
            lr=lr,
            update_successful=float(bool(ok)),
            micro_batches=float(len(mbs)),
            padding_frac=self._padding_frac(batch, mbs),
        )
        return metrics

    def _padding_frac(self, batch: TrainBatch, mbs: List[MicroBatch]) -> float:
        """The share of model positions this step computed (all ranks) that no trained token
        needs: right-padding, packing fillers, inert rows. What packing is there to reduce."""
        positions = torch.tensor(
            [float(sum(mb.input_ids.numel() for mb in mbs))], dtype=torch.float64, device=self.par.device
        )
        if self.par.dp * self.par.cp > 1:
            torch.distributed.all_reduce(positions, group=self.par.dp_cp_group)
        needed = sum(trained_lengths(batch.loss_mask))
        return 1.0 - needed / max(float(positions), 1.0)

    @torch.no_grad()
    def compute_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        """log pi(labels) of the current policy at the rollout temperature, [B, S] fp32 on
        the CPU, the same on every rank. Positions outside the loss mask hold whatever the
        model gives (0 for out-of-vocabulary labels)."""
        check_batch(batch)
        B, S = batch.input_ids.shape
        logp = forward_logprobs(
            self.model, self.par, self.micro_batches(batch), rows=B, seq_length=S, settings=self.settings, thd=self.thd
        )
        return logp.cpu()

    def micro_batches(self, batch: TrainBatch) -> List[MicroBatch]:
        """This rank's micro-batches of the global `batch` (packed and split over
        context-parallel ranks as configured)."""
        par, t = self.par, self.cfg.train
        return build_micro_batches(
            batch,
            dp=par.dp,
            dp_rank=par.dp_rank,
            micro_batch_size=t.micro_batch_size,
            cp=par.cp,
            cp_rank=par.cp_rank,
            pack=t.pack_sequences,
            pack_length=t.pack_length,
            seq_multiple=sequence_multiple(self.cfg),
        )

    def logprob_mismatch(self, batch: TrainBatch) -> Dict[str, float]:
        """Mean and max |trainer - rollout| log-prob over on-policy response tokens."""
        if batch.rollout_logp is None:
            raise ValueError("logprob_mismatch needs TrainBatch.rollout_logp")
        return logprob_mismatch(self.compute_logprobs(batch), batch.rollout_logp, on_policy_mask(batch))

    # ------------------------------------------------------------------------------------------
    # Weights and checkpoints
    # ------------------------------------------------------------------------------------------
    def export_weights(self) -> Iterator[Tuple[str, torch.Tensor]]:
        """(Megatron name, full tensor) for every parameter, TP shards gathered and PP stages
        walked, in canonical order, on every rank (collective: iterate to the end on all
        ranks). Names and layouts: see train/weights.py."""
        return iter_full_tensors(self.model, self.par, what="param")

    def save(
        self, directory: str, data_state: Optional[Mapping[str, Any]] = None, *, step: Optional[int] = None
    ) -> str:
        """Write a checkpoint under the root `directory` (see train/checkpoint.py), named by
        `step` (default: self.step, the number of updates done); keeps the newest
        checkpoint.keep_last. `data_state` (e.g. the data loader's position) must be the same
        on every rank. Returns the checkpoint's directory."""
        step = self.step if step is None else int(step)
        return ckpt.save_checkpoint(
            directory,
            step,
            self.model,
            self.optimizer,
            self.scheduler,
            self.par,
            data_state=data_state,
            keep_last=self.cfg.checkpoint.keep_last,
            optimizer_format=self.cfg.checkpoint.optimizer_format,
        )

    def load(self, path: str, *, load_optimizer: Optional[bool] = None) -> Tuple[int, Dict[str, Any]]:
        """Restore from a checkpoint directory or a root holding a `latest` pointer. Returns
        (step, data_state) as saved, and sets self.step to that step. Onto another TP/PP/DP/CP
        layout the weights and the LR schedule are restored, and the optimizer state when the
        checkpoint was written with checkpoint.optimizer_format=fully_reshardable.
        `load_optimizer`: None = whenever possible; False = weights only; True = or fail."""
        self.step, data_state = ckpt.load_checkpoint(
            path, self.model, self.optimizer, self.scheduler, self.par, load_optimizer=load_optimizer
        )
        return self.step, data_state


def sequence_multiple(cfg: Config) -> int:
    """Model rows are padded to a multiple of this: 2 x CP chunks for context parallelism,
    times TP for sequence parallelism (which splits the sequence over tensor-parallel ranks)."""
    p = cfg.parallel
    return (p.tensor if p.sequence_parallel else 1) * (2 * p.context if p.context > 1 else 1)


def _check_layout(cfg: Config) -> bool:
    """Refuse what this engine cannot run; True when packed rows go to transformer-engine's
    attention in the THD format (otherwise as a block-diagonal mask to local attention)."""
    te = use_transformer_engine(cfg.model.transformer_impl)
    packed = cfg.train.pack_sequences
    if packed and te and cfg.parallel.context > 1:
        raise NotImplementedError(
            "train.pack_sequences with parallel.context > 1 on transformer-engine attention needs the THD context-"
            "parallel split of every packed row, which this engine does not implement; set model.transformer_impl=local "
            "(all-gather context parallelism, slower) or train.pack_sequences=false"
        )
    return packed and te


def _with_old_logp(batch: TrainBatch, old: torch.Tensor) -> TrainBatch:
    return dataclasses.replace(batch, old_logp=old)
