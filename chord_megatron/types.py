"""The few records that cross layers: what a rollout engine returns, what the trainer consumes.

Token alignment (Megatron's convention): `input_ids[:, t]` is fed at position t and
`labels[:, t]` is the token predicted there (input_ids shifted left by one). `loss_mask`,
`old_logp` and `rollout_logp` are aligned with `labels`: entry t is about token labels[:, t].
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Optional

import torch


@dataclass
class Rollout:
    """One sampled response to one prompt, as an engine returns it."""

    prompt_ids: List[int]
    response_ids: List[int]
    logprobs: List[float]  # log-prob of each response token at the sampling temperature
    finish_reason: str  # "stop" | "length" | "abort"
    weight_version: Optional[str] = None
    prompt_index: int = 0  # which prompt of the request this answers
    sample_index: int = 0  # which of the samples_per_prompt
    metadata: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainBatch:
    """A global batch of mixed rows, right-padded to a common length S."""

    input_ids: torch.Tensor  # [B, S] long
    labels: torch.Tensor  # [B, S] long
    loss_mask: torch.Tensor  # [B, S] float, 1 on response tokens that are trained on
    is_expert: torch.Tensor  # [B] bool
    advantages: torch.Tensor  # [B] float (0 on expert rows)
    old_logp: Optional[torch.Tensor] = None  # [B, S]; None = compute with a forward-only pass
    rollout_logp: Optional[torch.Tensor] = None  # [B, S] the engine's log-probs (mismatch, TIS)

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "TrainBatch":
        """`fn` applied to every tensor field alike (absent optional fields stay None)."""
        return TrainBatch(**{f.name: None if (t := getattr(self, f.name)) is None else fn(t) for f in fields(self)})

    def select(self, index: torch.Tensor | slice) -> "TrainBatch":
        """The rows `index` (a slice or a tensor of row indices), every field alike."""
        return self.map(lambda t: t[index])
