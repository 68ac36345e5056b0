"""The CHORD loss on Megatron: the forward_step / loss_func adaptor for its pipeline schedules.

This is the one place where parallel layout meets the loss. The rules:

* Each micro-batch's loss is `algo.chord_loss` with the **global** token counts of the whole
  batch (all micro-batches, all data-parallel ranks) as denominators, so the global loss is
  the plain *sum* of the micro-batch losses over micro-batches and ranks.
* Megatron must therefore neither divide by the number of micro-batches nor average over
  data-parallel ranks. The model config sets `calculate_per_token_loss=True` (no per-micro-batch
  division, and DDP sums gradients instead of averaging them) and replaces Megatron's final
  division by its token count with nothing (`finalize_grads` in train/model.py).
* Context parallelism is not implemented (the engine refuses parallel.context > 1). It would
  split each row's positions over ranks; as every token's term already carries the global
  denominators, the per-rank partial sums would add up the same way.

The update then does not depend on the parallel layout or the micro-batch split, up to
floating-point summation order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.distributed as dist

from ..algo import chord_loss
from ..config import Config
from ..types import TrainBatch
from .batching import TokenCounts
from .log_probs import token_logprobs
from .metrics import metric_keys, reduce_step_metrics
from .parallel import ParallelState


@dataclass(frozen=True)
class LossSettings:
    """What the loss needs from the config: chord_loss keywords and the log-prob options."""

    chord_kwargs: Mapping[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    impl: str = "auto"

    @classmethod
    def from_config(cls, cfg: Config) -> "LossSettings":
        a = cfg.algorithm
        return cls(
            chord_kwargs=dict(
                clip_low=a.clip_low,
                clip_high=a.clip_high,
                dual_clip=a.dual_clip,
                token_weight=a.token_weight,
                tis_cap=a.tis_cap,
                logratio_clamp=a.logratio_clamp,
                weight_options=dict(
                    gamma=a.gamma, is_cap=a.is_cap, cutoff_prob=a.cutoff_prob, vocab_size=cfg.model.vocab_size
                ),
            ),
            temperature=cfg.rollout.temperature,
            impl=cfg.train.log_prob_impl,
        )


def _to(t: Optional[torch.Tensor], device: torch.device, dtype=None) -> Optional[torch.Tensor]:
    return None if t is None else t.to(device=device, dtype=dtype, non_blocking=True)


def _model_forward(mb: TrainBatch, model: torch.nn.Module, device: torch.device) -> torch.Tensor:
    """Logits [b, S, V_local] on the last stage, hidden states [S, b, H] on the others
    (which take their input from the previous stage, not from `input_ids`). Rows are
    right-padded, so the causal mask alone keeps real tokens from attending to padding."""
    b, S = mb.input_ids.shape
    input_ids = mb.input_ids.to(device=device, dtype=torch.long)
    position_ids = torch.arange(S, device=device).unsqueeze(0).expand(b, S)
    return model(input_ids, position_ids, None)


def _chord_loss_func(mb: TrainBatch, logits: torch.Tensor, *, mu: float, counts: TokenCounts,
                     settings: LossSettings, par: ParallelState):  # fmt: skip
    """Megatron loss_func, the 3-tuple form: (loss, token count, metrics)."""
    device = logits.device
    logp, entropy = token_logprobs(
        logits,
        mb.labels.to(device=device, dtype=torch.long),
        tp_group=par.tp_group,
        temperature=settings.temperature,
        impl=settings.impl,
        with_entropy=True,
        # Nothing reads the logits after this op: its backward may reuse their memory.
        inplace_backward=True,
    )
    loss, metrics = chord_loss(
        logp,
        _to(mb.old_logp, device, torch.float32),
        _to(mb.advantages, device, torch.float32),
        _to(mb.loss_mask, device),
        _to(mb.is_expert, device, torch.bool),
        mu,
        denominators=counts.as_denominators(),
        rollout_logp=_to(mb.rollout_logp, device, torch.float32),
        entropy=entropy,
        **settings.chord_kwargs,
    )
    num_tokens = (metrics["rl_tokens"] + metrics["sft_tokens"]).to(torch.int)
    return loss, num_tokens, metrics


def _logprob_func(mb: TrainBatch, logits: torch.Tensor, non_loss_data: bool = False, *,
                  settings: LossSettings, par: ParallelState) -> torch.Tensor:  # fmt: skip
    """Forward-only 'loss' function: the current policy's log-probs [b, S] (no gradient)."""
    logp, _ = token_logprobs(
        logits,
        mb.labels.to(device=logits.device, dtype=torch.long),
        tp_group=par.tp_group,
        temperature=settings.temperature,
        impl=settings.impl,
        with_entropy=False,
    )
    return logp.detach().float()


def run_schedule(model: List[torch.nn.Module], par: ParallelState, mbs: List[TrainBatch], loss_func_for,
                 *, forward_only: bool, collect_non_loss_data: bool = False) -> list:  # fmt: skip
    """Run Megatron's pipeline schedule for `par` over the micro-batches `mbs` (equal shapes).
    `loss_func_for(mb)` gives the loss function of a micro-batch. Returns what the loss
    functions returned (as Megatron stores it), on the last pipeline stage; [] elsewhere."""
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
    from megatron.core.utils import get_model_config

    b, S = mbs[0].input_ids.shape

    def forward_step(data_iterator, chunk):
        mb = next(data_iterator)
        return _model_forward(mb, chunk, par.device), loss_func_for(mb)

    # Interleaved schedules give every model chunk its own iterator over the same micro-batches.
    data = [iter(mbs) for _ in model] if len(model) > 1 else iter(mbs)
    extra = {}
    if par.pp > 1:
        extra["p2p_communicator"] = P2PCommunicator(pp_group=par.pp_group, config=get_model_config(model[0]))
    fb = get_forward_backward_func(pp_size=par.pp, vp_size=par.vpp)
    return fb(
        forward_step_func=forward_step,
        data_iterator=data,
        model=model if len(model) > 1 else model[0],
        num_microbatches=len(mbs),
        seq_length=S,
        micro_batch_size=b,
        forward_only=forward_only,
        collect_non_loss_data=collect_non_loss_data,
        pg_collection=par.pg,
        **extra,
    )


def chord_forward_backward(model: List[torch.nn.Module], par: ParallelState, mbs: List[TrainBatch], *,
                           mu: float, counts: TokenCounts, settings: LossSettings) -> Dict[str, float]:  # fmt: skip
    """Forward and backward of the CHORD loss over this rank's micro-batches; gradients end up
    reduced over data-parallel ranks in the DDP grad buffers (`param.main_grad`). Returns the
    batch's metrics (count-weighted over micro-batches and ranks), the same on every rank."""
    if any(mb.old_logp is None for mb in mbs):
        raise ValueError("chord_forward_backward: micro-batches need old_logp (MegatronEngine computes missing ones)")
    store = run_schedule(
        model,
        par,
        mbs,
        lambda mb: partial(_chord_loss_func, mb, mu=mu, counts=counts, settings=settings, par=par),
        forward_only=False,
    )
    metrics = reduce_step_metrics(
        store,
        metric_keys(settings.chord_kwargs),
        dp_cp_group=par.dp_cp_group,
        pp_group=par.pp_group,
        is_last_stage=par.is_last_stage,
        device=par.device,
    )
    metrics["mu"] = float(mu)
    return metrics


def forward_logprobs(model: List[torch.nn.Module], par: ParallelState, mbs: List[TrainBatch], *,
                     settings: LossSettings) -> torch.Tensor:  # fmt: skip
    """The current policy's log-probs of this rank's micro-batches, [n_mb * b, S] fp32 on
    `par.device`, on every pipeline stage (the last stage computes them and broadcasts)."""
    b, S = mbs[0].input_ids.shape
    with torch.no_grad():
        store = run_schedule(
            model,
            par,
            mbs,
            lambda mb: partial(_logprob_func, mb, settings=settings, par=par),
            forward_only=True,
            collect_non_loss_data=True,
        )
    if par.is_last_stage:
        local = torch.cat([t.to(par.device) for t in store])
    else:
        local = torch.empty(len(mbs) * b, S, dtype=torch.float32, device=par.device)
    if par.pp > 1:
        last = dist.get_global_rank(par.pp_group, par.pp - 1)
        dist.broadcast(local, src=last, group=par.pp_group)
    return local


def gather_rows(local: torch.Tensor, rows: List[int], group: dist.ProcessGroup) -> torch.Tensor:
    """Concatenate each rank's first rows[r] rows of `local` over `group`, in rank order.
    `local` has the same (padded) shape on every rank."""
    if dist.get_world_size(group) == 1:
        return local[: rows[0]]
    pieces = [torch.empty_like(local) for _ in rows]
    dist.all_gather(pieces, local.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(pieces, rows)])
