"""The CHORD loss on Megatron: the forward_step / loss_func adaptor for its pipeline schedules.

This is the one place where parallel layout meets the loss. The rules:

* Each micro-batch's loss is `algo.chord_loss` with the **global** token counts of the whole
  batch (all micro-batches, all data-parallel ranks) as denominators, so the global loss is
  the plain *sum* of the micro-batch losses over micro-batches and ranks.
* Megatron must therefore neither divide by the number of micro-batches nor average over
  data-parallel ranks. The model config sets `calculate_per_token_loss=True` (no per-micro-batch
  division, and DDP sums gradients instead of averaging them) and replaces Megatron's final
  division by its token count with nothing (`finalize_grads` in train/model.py).
* The loss is computed in the rows' layout even when the model reads packed rows or this
  context-parallel rank's share of the positions (train/micro_batch.py): per-token log-probs
  are scattered back to the rows, and tokens this rank does not hold are masked out. Every
  token's term carries the global denominators, so the partial sums of context-parallel
  ranks add up like those of data-parallel ranks (DDP reduces over both).

The update then does not depend on the parallel layout or the micro-batch split, up to
floating-point summation order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist

from ..algo import chord_loss
from ..config import Config
from .batching import TokenCounts
from .log_probs import token_logprobs
from .metrics import metric_keys, mismatch_sums, reduce_step_metrics, reduce_step_mismatch
from .micro_batch import MicroBatch
from .model import forward_kwargs
from .packing import block_causal_mask, cu_seqlens
from .parallel import ParallelState


@dataclass(frozen=True)
class LossSettings:
    """What the loss needs from the config: chord_loss keywords and the log-prob options."""

    chord_kwargs: Mapping[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    impl: str = "auto"
    metric_keys: Tuple[str, ...] = ()  # what chord_loss reports with chord_kwargs (train/metrics.py)

    @classmethod
    def from_config(cls, cfg: Config) -> "LossSettings":
        a = cfg.algorithm
        chord_kwargs = dict(
            clip_low=a.clip_low,
            clip_high=a.clip_high,
            dual_clip=a.dual_clip,
            token_weight=a.token_weight,
            tis_cap=a.tis_cap,
            logratio_clamp=a.logratio_clamp,
            weight_options=dict(
                gamma=a.gamma, is_cap=a.is_cap, cutoff_prob=a.cutoff_prob, vocab_size=cfg.model.vocab_size
            ),
        )
        return cls(
            chord_kwargs=chord_kwargs,
            temperature=cfg.rollout.temperature,
            impl=cfg.train.log_prob_impl,
            metric_keys=tuple(metric_keys(chord_kwargs)),
        )


def _to(t: Optional[torch.Tensor], device: torch.device, dtype=None) -> Optional[torch.Tensor]:
    return None if t is None else t.to(device=device, dtype=dtype, non_blocking=True)


def _model_forward(mb: MicroBatch, model: torch.nn.Module, device: torch.device, thd: bool) -> torch.Tensor:
    """Logits [b, L / CP, V_local] on the last stage, hidden states on the others (which take
    their input from the previous stage, not from `input_ids`). Plain rows are right-padded,
    so the causal mask alone keeps real tokens from attending to padding; packed rows get a
    block-diagonal causal mask (local attention) or transformer-engine's THD format (`thd`:
    all model rows of the micro-batch as one sequence with segment boundaries)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    input_ids = mb.input_ids.to(device=device, dtype=torch.long)
    b, L_local = input_ids.shape
    position_ids = torch.arange(L_local, device=device).unsqueeze(0).expand(b, L_local)
    kw = forward_kwargs(model)  # bf16 models hand the loss bf16 logits, not an fp32 copy
    if mb.segment_ids is None:
        return model(input_ids, position_ids, None, **kw)
    if not thd:
        return model(input_ids, position_ids, block_causal_mask(mb.segment_ids.to(device)), **kw)
    cu = cu_seqlens(mb.segment_ids).to(device)
    longest = int((cu[1:] - cu[:-1]).max())
    params = PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest, max_seqlen_kv=longest
    )
    return model(input_ids.reshape(1, -1), position_ids.reshape(1, -1), None, packed_seq_params=params, **kw)


def _rows_logprobs(
    mb: MicroBatch,
    logits: torch.Tensor,
    settings: LossSettings,
    par: ParallelState,
    *,
    with_entropy: bool,
    inplace_backward: bool,
):
    """Per-token log-probs (and entropies) of the micro-batch, in the rows' layout [n, S]."""
    logits = logits.reshape(*mb.input_ids.shape, logits.shape[-1])
    logp, entropy = token_logprobs(
        logits,
        mb.labels.to(device=logits.device, dtype=torch.long),
        tp_group=par.tp_group,
        temperature=settings.temperature,
        impl=settings.impl,
        with_entropy=with_entropy,
        inplace_backward=inplace_backward,
    )
    return mb.to_rows(logp), (None if entropy is None else mb.to_rows(entropy))


def _chord_loss_func(
    mb: MicroBatch, logits: torch.Tensor, *, mu: float, counts: TokenCounts, settings: LossSettings, par: ParallelState
):
    """Megatron loss_func, the 3-tuple form: (loss, token count, metrics)."""
    device = logits.device
    # Nothing reads the logits after this op: its backward may reuse their memory.
    logp, entropy = _rows_logprobs(mb, logits, settings, par, with_entropy=True, inplace_backward=True)
    rows = mb.rows
    loss_mask = _to(rows.loss_mask, device)
    present = mb.present()
    if present is not None:  # tokens another context-parallel rank (or nobody) computes
        loss_mask = loss_mask * present.to(device)
    # No old log-probs (one update per batch): the policy that sampled is the one being
    # trained, and this forward's own log-probs, detached, are the numbers a separate forward
    # pass would give (ratio 1, the same gradient) -- without the pass.
    old_logp = logp.detach() if rows.old_logp is None else _to(rows.old_logp, device, torch.float32)
    loss, metrics = chord_loss(
        logp,
        old_logp,
        _to(rows.advantages, device, torch.float32),
        loss_mask,
        _to(rows.is_expert, device, torch.bool),
        mu,
        denominators=counts.as_denominators(),
        rollout_logp=_to(rows.rollout_logp, device, torch.float32),
        entropy=entropy,
        **settings.chord_kwargs,
    )
    if rows.rollout_logp is not None:  # served vs trainer log-probs of the sampled tokens, for free
        on_policy = loss_mask.bool() & ~_to(rows.is_expert, device, torch.bool)[:, None]
        metrics["logp_mismatch_sums"] = mismatch_sums(logp, _to(rows.rollout_logp, device), on_policy)
    num_tokens = (metrics["rl_tokens"] + metrics["sft_tokens"]).to(torch.int)
    return loss, num_tokens, metrics


def _logprob_func(
    mb: MicroBatch, logits: torch.Tensor, non_loss_data: bool = False, *, settings: LossSettings, par: ParallelState
) -> torch.Tensor:
    """Forward-only 'loss' function: the current policy's log-probs [n, S] (no gradient; 0 at
    tokens this rank does not compute)."""
    logp, _ = _rows_logprobs(mb, logits, settings, par, with_entropy=False, inplace_backward=False)
    return logp.detach().float()


def run_schedule(
    model: List[torch.nn.Module],
    par: ParallelState,
    mbs: List[MicroBatch],
    loss_func_for,
    *,
    forward_only: bool,
    collect_non_loss_data: bool = False,
    thd: bool = False,
) -> list:
    """Run Megatron's pipeline schedule for `par` over the micro-batches `mbs` (equal model
    shapes). `loss_func_for(mb)` gives the loss function of a micro-batch. Returns what the
    loss functions returned (as Megatron stores it), on the last pipeline stage; [] elsewhere."""
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
    from megatron.core.utils import get_model_config

    b, L = mbs[0].micro_batch_size, mbs[0].seq_length
    if thd and mbs[0].segment_ids is not None:  # the model rows travel as one [b * L] sequence
        b, L = 1, b * L

    def forward_step(data_iterator, chunk):
        mb = next(data_iterator)
        return _model_forward(mb, chunk, par.device, thd), loss_func_for(mb)

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
        seq_length=L,  # the whole length: the schedule divides by the context-parallel size
        micro_batch_size=b,
        forward_only=forward_only,
        collect_non_loss_data=collect_non_loss_data,
        pg_collection=par.pg,
        **extra,
    )


def chord_forward_backward(
    model: List[torch.nn.Module],
    par: ParallelState,
    mbs: List[MicroBatch],
    *,
    mu: float,
    counts: TokenCounts,
    settings: LossSettings,
    thd: bool = False,
) -> Dict[str, float]:
    """Forward and backward of the CHORD loss over this rank's micro-batches; gradients end up
    reduced over data- and context-parallel ranks in the DDP grad buffers (`param.main_grad`).
    Returns the batch's metrics (count-weighted over micro-batches and ranks), the same on
    every rank, with logp_mismatch_* when the rows carry the rollout engine's log-probs.
    Rows without old_logp take this forward's own, detached."""
    store = run_schedule(
        model,
        par,
        mbs,
        lambda mb: partial(_chord_loss_func, mb, mu=mu, counts=counts, settings=settings, par=par),
        forward_only=False,
        thd=thd,
    )
    metrics = reduce_step_metrics(
        store,
        settings.metric_keys,
        dp_cp_group=par.dp_cp_group,
        pp_group=par.pp_group,
        is_last_stage=par.is_last_stage,
        device=par.device,
    )
    if mbs and mbs[0].rows.rollout_logp is not None:
        metrics.update(
            reduce_step_mismatch(
                [m["logp_mismatch_sums"] for m in store],
                dp_cp_group=par.dp_cp_group,
                pp_group=par.pp_group,
                is_last_stage=par.is_last_stage,
                device=par.device,
            )
        )
    metrics["mu"] = float(mu)
    return metrics


def forward_logprobs(
    model: List[torch.nn.Module],
    par: ParallelState,
    mbs: List[MicroBatch],
    *,
    rows: int,
    seq_length: int,
    settings: LossSettings,
    thd: bool = False,
) -> torch.Tensor:
    """The current policy's log-probs of a global batch of `rows` x `seq_length` tokens whose
    micro-batches on this rank are `mbs`: [rows, seq_length] fp32 on `par.device`, the same on
    every rank. Each token is computed by one (data-, context-parallel) rank of the last
    pipeline stage; the others contribute zeros to a sum over those ranks, which the last stage
    then broadcasts along the pipeline."""
    with torch.no_grad():
        store = run_schedule(
            model,
            par,
            mbs,
            lambda mb: partial(_logprob_func, mb, settings=settings, par=par),
            forward_only=True,
            collect_non_loss_data=True,
            thd=thd,
        )
    out = torch.zeros(rows, seq_length, dtype=torch.float32, device=par.device)
    if par.is_last_stage:
        for mb, logp in zip(mbs, store):
            real = mb.row_ids >= 0
            out[mb.row_ids[real].to(par.device)] = logp.to(par.device)[real.to(par.device)]
    if dist.get_world_size(par.dp_cp_group) > 1:
        dist.all_reduce(out, group=par.dp_cp_group)
    if par.pp > 1:
        last = dist.get_global_rank(par.pp_group, par.pp - 1)
        dist.broadcast(out, src=last, group=par.pp_group)
    return out
