"""The RolloutEngine interface: the few verbs the training loop needs from an inference engine.

    generate(prompts, samples_per_prompt, params) -> [Rollout]   ordered by (prompt, sample)
    generate_complete(engine, ...) -> ([Rollout], aborted)     the same, no sample cut by an abort
    pause() / resume()                                          bracket a weight sync
    release_memory(tags)                                        lend GPU memory to a train step
    update_weights(named_tensors, version)                      Hugging Face names and layouts
    health() -> bool, weight_version, close()

Log-probs are those of the sampled tokens at the sampling temperature, log_softmax(logits / T),
as SGLang reports them; the trainer divides its logits by the same T before comparing.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from ..errors import ChordError
from ..types import Rollout


@dataclass(frozen=True)
class SamplingParams:
    """What every engine honours. `seed` makes a generate call reproducible where the engine can."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: Tuple[int, ...] = ()
    seed: Optional[int] = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams: max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            # Greedy decoding has no log-prob at "temperature 0"; RL never wants it.
            raise ValueError(f"SamplingParams: temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams: top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @classmethod
    def from_config(
        cls, rollout_cfg, stop_token_ids: Sequence[int] = (), seed: Optional[int] = None
    ) -> "SamplingParams":
        """From a RolloutConfig (temperature, top_p, max_new_tokens)."""
        return cls(
            max_new_tokens=rollout_cfg.max_new_tokens,
            temperature=rollout_cfg.temperature,
            top_p=rollout_cfg.top_p,
            stop_token_ids=tuple(stop_token_ids),
            seed=seed,
        )


class RolloutError(ChordError, RuntimeError):
    """A rollout could not be completed; the message names the server or sample at fault."""


class RolloutEngine(abc.ABC):
    """An inference engine the training loop samples from and pushes weights to."""

    @abc.abstractmethod
    def generate(
        self, prompts: Sequence[Sequence[int]], samples_per_prompt: int, params: SamplingParams
    ) -> List[Rollout]:
        """`samples_per_prompt` responses to each prompt (token ids), ordered by
        (prompt_index, sample_index); every pair appears exactly once or RolloutError is raised."""

    @abc.abstractmethod
    def update_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]], version: str) -> None:
        """Load Hugging Face-named tensors (any subset of the model, load_state_dict semantics) and
        tag what is served from now on with `version`."""

    def pause(self) -> None:
        """Stop admitting new generation work (before a weight sync). Default: nothing to do."""

    def resume(self) -> None:
        """Undo pause()."""

    def release_memory(self, tags: Sequence[str]) -> None:
        """Free GPU memory regions ("kv_cache", "weights") for the trainer until they are needed
        again (rollout.release_sglang_memory). Default: the engine has none to give."""

    @abc.abstractmethod
    def health(self) -> bool:
        """True when the engine can serve generate()."""

    @property
    @abc.abstractmethod
    def weight_version(self) -> Optional[str]:
        """The version last passed to update_weights (None before the first sync)."""

    def close(self) -> None:
        """Release processes and connections. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_complete(rollouts: Sequence[Rollout], num_prompts: int, samples_per_prompt: int) -> None:
    """Raise RolloutError unless every (prompt_index, sample_index) pair appears exactly once, in
    order. Engines call this before returning, so a lost or duplicated sample never goes unseen."""
    expected = [(p, s) for p in range(num_prompts) for s in range(samples_per_prompt)]
    got = [(r.prompt_index, r.sample_index) for r in rollouts]
    if got == expected:
        return
    seen = set()
    dupes = sorted({k for k in got if k in seen or seen.add(k)})
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    parts = []
    if missing:
        parts.append(f"missing (prompt, sample) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if dupes:
        parts.append(f"duplicated {dupes[:5]}{' ...' if len(dupes) > 5 else ''}")
    if extra:
        parts.append(f"unexpected {extra[:5]}")
    if not parts:
        parts.append("out of order")
    raise RolloutError(
        f"rollout incomplete: expected {num_prompts} prompts x {samples_per_prompt} samples, got "
        f"{len(rollouts)}; " + "; ".join(parts)
    )


ABORT_REGENERATIONS = 3  # rounds of regeneration before a prompt's aborted samples stop the run


def generate_complete(
    engine: RolloutEngine,
    prompts: Sequence[Sequence[int]],
    samples_per_prompt: int,
    params: SamplingParams,
    *,
    rounds: int = ABORT_REGENERATIONS,
) -> Tuple[List[Rollout], int]:
    """engine.generate, with every sample whose finish reason is "abort" (cut by a pause, an
    abort, a server that dropped it) regenerated: a cut response scored as a complete answer, or
    trained on, would teach the model from text it never finished. The prompt's whole group is
    drawn again, so its samples share one request (and its seeds). Returns the rollouts and how
    many aborted samples were replaced, for the metrics; RolloutError if some are still aborted
    after `rounds` regenerations (the run stops; --resume continues it)."""
    rollouts = list(engine.generate(prompts, samples_per_prompt, params))
    aborted = 0
    for _ in range(rounds):
        cut = sorted({r.prompt_index for r in rollouts if r.finish_reason == "abort"})
        if not cut:
            return rollouts, aborted
        aborted += sum(r.finish_reason == "abort" for r in rollouts)
        again = engine.generate([prompts[i] for i in cut], samples_per_prompt, params)
        for r in again:
            r.prompt_index = cut[r.prompt_index]
            rollouts[r.prompt_index * samples_per_prompt + r.sample_index] = r
    still = [r for r in rollouts if r.finish_reason == "abort"]
    if still:
        cut = sorted({r.prompt_index for r in still})
        # SGLang also aborts a request it cannot serve (e.g. too long for the context): its reason.
        why = still[0].metadata.get("finish_message") or "no reason given"
        raise RolloutError(
            f"prompts {cut[:5]}{' ...' if len(cut) > 5 else ''} still had aborted samples after "
            f"{rounds} regenerations (the server's reason: {why}): is a server being paused or aborted "
            f"by something else?"
        )
    return rollouts, aborted
