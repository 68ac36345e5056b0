"""RolloutEngine over SGLang servers: the synchronous face of the async SGLangClient.

The client lives on an event loop in a background thread, so the (synchronous) training loop can
call generate() and, from another thread, abort() or pause() while a generate is running.

One /generate per prompt with n = samples_per_prompt: the prompt is prefilled once, and a
failed request is retried as a whole, so a prompt's samples are never partly lost or repeated.

Memory released for training (release_memory) comes back when it is next needed: the weights
at the next update_weights (which overwrites them all), the KV cache at the next generate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import torch

from ...data.seeding import sample_seed
from ...types import Rollout
from ..engine import RolloutEngine, RolloutError, SamplingParams, check_complete
from .client import SGLangClient, SGLangError
from .protocol import MEMORY_TAGS

# A weight transport (weight_sync/*.py): pushes HF-named tensors through the client and returns
# what it moved (weight_sync.buckets.SyncStats).
Transport = Callable[["SGLangEngine", Iterable[Tuple[str, torch.Tensor]], str], object]


class _LoopThread:
    """An asyncio loop running in a daemon thread; run() submits a coroutine and waits."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sglang-client", daemon=True)
        self.thread.start()

    def run(self, coro, timeout_s: Optional[float] = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self):
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()


class SGLangEngine(RolloutEngine):
    def __init__(
        self,
        client: SGLangClient,
        *,
        deployment=None,
        weight_sync: Optional[Transport] = None,
        pause_mode: str = "abort",
        seeded: bool = False,
    ):
        """`seeded`: when SamplingParams.seed is set, send each sample as its own request with
        a sampling_seed derived from (seed, prompt, sample), so that a rollout can be repeated
        exactly; SGLang honours it on servers started with --enable-deterministic-inference."""
        self._loop = _LoopThread()
        self.seeded = seeded
        self.client = client
        self.deployment = deployment  # router.Deployment: stopped on close() if we started it
        self.weight_sync = weight_sync
        self.pause_mode = pause_mode
        self._version: Optional[str] = None
        self.last_sync = None  # what the transport returned for the last update (SyncStats)
        self._released: set = set()  # memory regions released on every worker (protocol.MEMORY_TAGS)
        self._weights_lost = False  # weights were released and no update has refilled them yet
        self._closed = False
        self.run(client.start())

    @classmethod
    def from_config(
        cls, cfg, *, log_dir: Optional[Path] = None, weight_sync: Optional[Transport] = None
    ) -> "SGLangEngine":
        """Attach to or launch the deployment `cfg.rollout` describes (see router.deploy); weights
        travel by the transport rollout.weight_sync names unless `weight_sync` is given."""
        from ...weight_sync.factory import transport_from_config
        from .router import deploy

        r = cfg.rollout
        dep = deploy(r, cfg.sglang, log_dir=Path(log_dir or Path(cfg.train.output_dir) / "sglang"))
        client = SGLangClient(
            dep.generate_urls,
            dep.worker_urls,
            concurrency=r.concurrency,
            timeout_s=r.request_timeout_s,
            max_retries=r.max_retries,
        )
        return cls(
            client, deployment=dep, weight_sync=weight_sync or transport_from_config(cfg), seeded=r.seeded_sampling
        )

    def run(self, coro, timeout_s: Optional[float] = None):
        """Run a client coroutine on the engine's loop (usable from any thread)."""
        return self._loop.run(coro, timeout_s)

    def submit(self, coro) -> "concurrent.futures.Future":
        """Start a client coroutine and return at once (e.g. announce a bucket, then broadcast it)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop.loop)

    # -- RolloutEngine ---------------------------------------------------------------------------
    def generate(
        self, prompts: Sequence[Sequence[int]], samples_per_prompt: int, params: SamplingParams
    ) -> List[Rollout]:
        if samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
        if self._weights_lost:
            raise RolloutError(
                "the SGLang servers' weights were released for training and no weight update has "
                "refilled them: generating now would sample from garbage"
            )
        self._resume_memory(MEMORY_TAGS)
        rollouts = self.run(self._generate(prompts, samples_per_prompt, params))
        check_complete(rollouts, len(prompts), samples_per_prompt)
        return rollouts

    async def _generate(self, prompts, k, params) -> List[Rollout]:
        async def samples_of(p_idx, prompt):
            if not (self.seeded and params.seed is not None):
                return await self.client.generate(prompt, params, k)
            seeded = [
                self.client.generate(prompt, params, 1, sampling_seed=sample_seed(params.seed, p_idx, j))
                for j in range(k)
            ]
            return [s for one_sample in await asyncio.gather(*seeded) for s in one_sample]

        async def one(p_idx, prompt):
            try:
                samples = await samples_of(p_idx, prompt)
            except SGLangError as e:
                raise RolloutError(f"prompt {p_idx}: {e}") from e
            return [
                Rollout(
                    prompt_ids=list(prompt),
                    response_ids=s.output_ids,
                    logprobs=s.logprobs,
                    finish_reason=s.finish_reason,
                    weight_version=s.weight_version,
                    prompt_index=p_idx,
                    sample_index=j,
                    metadata=dict(s.meta, missing_logprobs=s.missing_logprobs) if s.missing_logprobs else dict(s.meta),
                )
                for j, s in enumerate(samples)
            ]

        tasks = [asyncio.ensure_future(one(i, p)) for i, p in enumerate(prompts)]
        try:
            groups = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:  # one prompt failed for good: do not leave the rest running
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [r for g in groups for r in g]

    def update_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]], version: str) -> None:
        if self.weight_sync is None:
            raise RolloutError("SGLangEngine has no weight transport (weight_sync/): pass weight_sync=")
        self._resume_memory(("weights",))  # their content is garbage: this update overwrites it
        self.last_sync = self.weight_sync(self, named_tensors, str(version))
        self._version = str(version)
        self._weights_lost = False

    def release_memory(self, tags: Sequence[str]) -> None:
        """Free `tags` (of protocol.MEMORY_TAGS) on every worker, for the trainer to use; what is
        already released is skipped. Releasing "weights" means the next call must be a full
        update_weights: generate refuses until then."""
        todo = [t for t in MEMORY_TAGS if t in tags and t not in self._released]
        if not todo:
            return
        self.run(self.client.release_memory_occupation(todo))
        self._released.update(todo)
        self._weights_lost = self._weights_lost or "weights" in todo

    def _resume_memory(self, tags: Sequence[str]) -> None:
        todo = [t for t in MEMORY_TAGS if t in tags and t in self._released]
        if todo:
            self.run(self.client.resume_memory_occupation(todo))
            self._released.difference_update(todo)

    @property
    def released_memory(self) -> Tuple[str, ...]:
        """The regions released on the workers now, in protocol.MEMORY_TAGS order."""
        return tuple(t for t in MEMORY_TAGS if t in self._released)

    def pause(self) -> None:
        self.run(self.client.pause(self.pause_mode))

    def resume(self) -> None:
        self.run(self.client.resume())

    def abort(self) -> None:
        """Abort every running request (a concurrent generate() returns them as finish 'abort')."""
        self.run(self.client.abort_all())

    def flush_cache(self) -> None:
        self.run(self.client.flush_cache())

    def health(self) -> bool:
        return all(self.run(self.client.health()).values())

    def served_versions(self) -> dict:
        """{worker: weight_version} as the workers report it (/model_info)."""
        return self.run(self.client.weight_versions())

    @property
    def weight_version(self) -> Optional[str]:
        return self._version

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.run(self.client.close(), timeout_s=10)
        finally:
            self._loop.stop()
            if self.deployment is not None:
                self.deployment.close()
