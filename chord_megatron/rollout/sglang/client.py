"""The one module that speaks HTTP to SGLang: an asyncio client for /generate and the control routes.

Where requests go:
  * /generate goes to `generate_urls`: the router's URL (it balances over workers and routes
    around dead ones), or the workers themselves, tried round-robin, each retry on the next one;
  * everything else (pause, flush, abort, weight updates, memory release, /model_info) goes to every worker
    directly: sglang-router 0.3 forwards none of the weight-update routes, and a sync must reach
    every worker anyway.

Failure policy: a /generate that fails on the network, times out, answers 429/5xx or malformed
JSON is retried with exponential backoff up to `max_retries` times; a 4xx other than 429 means the
request itself is wrong and fails at once. The final error names every server tried and why.
Concurrency is bounded by a semaphore around the HTTP call (not around the backoff sleeps).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import aiohttp

from ...errors import ChordError
from ..engine import SamplingParams
from . import protocol as proto
from .protocol import GeneratedSample, MalformedResponse

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class SGLangError(ChordError, RuntimeError):
    """An SGLang call failed; the message names the server(s) and the reason."""


class SGLangClient:
    def __init__(
        self,
        generate_urls: Sequence[str],
        worker_urls: Optional[Sequence[str]] = None,
        *,
        concurrency: int = 64,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        control_timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
    ):
        if not generate_urls:
            raise ValueError("SGLangClient needs at least one URL to send /generate to")
        self.generate_urls = [u.rstrip("/") for u in generate_urls]
        self.worker_urls = [u.rstrip("/") for u in (worker_urls if worker_urls else generate_urls)]
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.control_timeout_s = control_timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._rr = itertools.cycle(range(len(self.generate_urls)))
        self._sem: Optional[asyncio.Semaphore] = None
        self._session: Optional[aiohttp.ClientSession] = None
        self._memory_saver_checked = False

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> "SGLangClient":
        if self._session is None:
            self._sem = asyncio.Semaphore(self.concurrency)
            # limit=0: the semaphore is the bound; aiohttp's pool would silently queue instead.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.close()

    # -- raw HTTP ------------------------------------------------------------------------------
    async def _http(
        self, method: str, url: str, path: str, body: Any = None, timeout_s: Optional[float] = None
    ) -> Tuple[int, str]:
        if self._session is None:
            raise RuntimeError("SGLangClient used before start()")
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s, sock_connect=self.connect_timeout_s)
        async with self._session.request(method, url + path, json=body, timeout=timeout) as resp:
            return resp.status, await resp.text()

    def _backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * (2**attempt))
        return base * (0.5 + random.random() / 2)  # jitter: retries of many requests spread out

    # -- /generate -----------------------------------------------------------------------------
    async def generate(
        self, input_ids: Sequence[int], params: SamplingParams, n: int = 1, sampling_seed: Optional[int] = None
    ) -> List[GeneratedSample]:
        """`n` samples of one prompt, in the server's order; retried as a whole on failure, so a
        prompt's samples come from one successful answer and none is lost or repeated.
        `sampling_seed` (n = 1 only): SGLang's per-request seed."""
        body = proto.generate_body(input_ids, params, n, sampling_seed)
        errors: List[str] = []
        attempts = self.max_retries + 1
        first = next(self._rr)
        for attempt in range(attempts):
            # Each retry of this request moves to the next URL (concurrent requests share the
            # cycle, so a shared next() could send every retry to the same dead worker).
            url = self.generate_urls[(first + attempt) % len(self.generate_urls)]
            try:
                async with self._sem:
                    status, text = await self._http("POST", url, "/generate", body)
                if status == 200:
                    return proto.parse_generate_response(proto.parse_json(text), n, params.max_new_tokens)
                reason = f"HTTP {status}: {proto.error_message(text)}"
                if status not in RETRYABLE_STATUS:
                    raise SGLangError(f"{url}/generate rejected the request ({reason})")
            except MalformedResponse as e:
                reason = f"malformed answer: {e}"
            except asyncio.TimeoutError:
                reason = f"no answer within {self.timeout_s:g}s"
            except aiohttp.ClientError as e:
                reason = f"{type(e).__name__}: {e}"
            errors.append(f"{url}: {reason}")
            log.warning("/generate attempt %d/%d failed at %s", attempt + 1, attempts, errors[-1])
            if attempt + 1 < attempts:
                await asyncio.sleep(self._backoff(attempt))
        raise SGLangError(f"/generate failed {attempts} times: " + "; ".join(errors))

    # -- control routes ------------------------------------------------------------------------
    async def _control(
        self,
        url: str,
        route: str,
        body: Optional[Dict[str, Any]] = None,
        *,
        retries: int = 0,
        timeout_s: Optional[float] = None,
    ) -> Tuple[int, str]:
        r = proto.ROUTES[route]
        last = ""
        for attempt in range(retries + 1):
            try:
                return await self._http(
                    r.method, url, r.path, body if r.method == "POST" else None, timeout_s or self.control_timeout_s
                )
            except asyncio.TimeoutError:
                last = f"no answer within {timeout_s or self.control_timeout_s:g}s"
            except aiohttp.ClientError as e:
                last = f"{type(e).__name__}: {e}"
            if attempt < retries:
                await asyncio.sleep(self._backoff(attempt))
        raise SGLangError(f"{url}{r.path} failed: {last}")

    async def _expect_success(self, url: str, route: str, body: Dict[str, Any], **kw) -> str:
        ok, message = await self._try_success(url, route, body, **kw)
        if not ok:
            raise SGLangError(f"{url}{proto.ROUTES[route].path} failed: {message}")
        return message

    async def _on_workers(self, fn, urls: Optional[Sequence[str]] = None) -> List[Any]:
        """Run fn(url) on every worker concurrently; one error naming every failed worker."""
        urls = list(urls or self.worker_urls)
        results = await asyncio.gather(*(fn(u) for u in urls), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise SGLangError("; ".join(str(e) for e in failed)) from failed[0]
        return results

    async def health(self, timeout_s: float = 5.0) -> Dict[str, bool]:
        """{worker: answers 200 on /health}."""

        async def one(url):
            try:
                status, _ = await self._control(url, "health", timeout_s=timeout_s)
                return status == 200
            except SGLangError:
                return False

        results = await asyncio.gather(*(one(u) for u in self.worker_urls))
        return dict(zip(self.worker_urls, results))

    async def weight_versions(self) -> Dict[str, Optional[str]]:
        """{worker: weight_version from /model_info}."""

        async def one(url):
            status, text = await self._control(url, "model_info", retries=2)
            if status != 200:
                raise SGLangError(f"{url}/model_info answered HTTP {status}: {proto.error_message(text)}")
            try:
                return proto.weight_version_of(proto.parse_json(text))
            except MalformedResponse as e:
                raise SGLangError(f"{url}/model_info: {e}") from None

        return dict(zip(self.worker_urls, await self._on_workers(one)))

    async def server_infos(self) -> Dict[str, Dict[str, Any]]:
        """{worker: /server_info} -- the server's resolved launch options (tp_size, dp_size, ...)."""

        async def one(url):
            status, text = await self._control(url, "server_info", retries=2)
            payload = proto.parse_json(text) if status == 200 else None
            if not isinstance(payload, dict):
                raise SGLangError(f"{url}/server_info answered HTTP {status}: {proto.error_message(text)}")
            return payload

        return dict(zip(self.worker_urls, await self._on_workers(one)))

    async def flush_cache(self, timeout_s: float = 60.0, interval_s: float = 0.2) -> None:
        """Flush every worker's prefix cache. SGLang answers 400 while requests still run, so
        each worker is retried until it accepts or `timeout_s` passes."""
        loop = asyncio.get_running_loop()

        async def one(url):
            deadline = loop.time() + timeout_s
            while True:
                status, text = await self._control(url, "flush_cache", {}, retries=2)
                if status == 200:
                    return
                if status != 400 or loop.time() > deadline:
                    raise SGLangError(f"{url}/flush_cache failed (HTTP {status}): {proto.error_message(text)}")
                await asyncio.sleep(interval_s)

        await self._on_workers(one)

    async def abort_all(self) -> None:
        """Abort every running request on every worker; their /generate answers come back with
        finish_reason abort."""

        async def one(url):
            status, text = await self._control(url, "abort_request", proto.abort_all_body(), retries=2)
            if status != 200:
                raise SGLangError(f"{url}/abort_request failed (HTTP {status}): {proto.error_message(text)}")

        await self._on_workers(one)

    async def pause(self, mode: str = "abort") -> None:
        body = proto.pause_body(mode)

        async def one(url):
            status, text = await self._control(url, "pause_generation", body, retries=2)
            if status != 200:
                raise SGLangError(f"{url}/pause_generation failed (HTTP {status}): {proto.error_message(text)}")

        await self._on_workers(one)

    async def resume(self) -> None:
        async def one(url):
            status, text = await self._control(url, "continue_generation", proto.continue_body(), retries=2)
            if status != 200:
                raise SGLangError(f"{url}/continue_generation failed (HTTP {status}): {proto.error_message(text)}")

        await self._on_workers(one)

    # -- memory occupation (colocated runs: the trainer borrows the servers' GPU memory) -------
    async def release_memory_occupation(self, tags: Sequence[str]) -> None:
        """Free `tags` (protocol.MEMORY_TAGS) on every worker. SGLang asserts that a server is
        idle when asked, so every worker's cache is flushed first (the flush waits until no
        request runs). Workers started without --enable-memory-saver are refused: SGLang would
        answer success and free nothing. Not retried: a second release of a region fails."""
        body = proto.memory_occupation_body(tags)
        if not self._memory_saver_checked:
            infos = await self.server_infos()
            off = [u for u, info in infos.items() if info.get("enable_memory_saver") is not True]
            if off:
                raise SGLangError(
                    f"{', '.join(off)} run(s) without --enable-memory-saver: releasing memory would free "
                    f"nothing (set sglang.enable_memory_saver: true, or rollout.release_sglang_memory: false)"
                )
            self._memory_saver_checked = True
        await self.flush_cache()
        await self._on_workers(lambda u: self._memory_call(u, "release_memory_occupation", body))

    async def resume_memory_occupation(self, tags: Sequence[str]) -> None:
        """Take back what release_memory_occupation freed; released weights come back as
        garbage, to be overwritten by a full weight update. Not retried (a double resume fails)."""
        body = proto.memory_occupation_body(tags)
        await self._on_workers(lambda u: self._memory_call(u, "resume_memory_occupation", body))

    async def _memory_call(self, url: str, route: str, body: Dict[str, Any]) -> None:
        # SGLang 0.5.23 answers 200 with an empty (null) body, or an error object.
        status, text = await self._control(url, route, body)
        if status != 200:
            raise SGLangError(f"{url}{proto.ROUTES[route].path} failed (HTTP {status}): {proto.error_message(text)}")

    # -- weight updates ------------------------------------------------------------------------
    async def _try_success(self, url: str, route: str, body: Dict[str, Any], **kw) -> Tuple[bool, str]:
        """(success, message) of one control call that answered; network failures raise."""
        status, text = await self._control(url, route, body, **kw)
        try:
            ok, message = proto.check_success(proto.parse_json(text))
        except MalformedResponse:
            ok, message = False, f"HTTP {status}: {proto.error_message(text)}"
        return ok and status == 200, message

    async def _begin_one(self, url: str) -> None:
        route, body = "begin_weight_update", proto.begin_weight_update_body()
        ok, message = await self._try_success(url, route, body, retries=2)
        if not ok and proto.SESSION_ALREADY_OPEN in message:
            # Left open by a crashed earlier run (a --resume finds it too), by a sync whose end
            # never arrived, or by a retried begin whose first answer was lost. SGLang refuses
            # every begin until it is ended, so end it (its half-loaded weights are about to be
            # overwritten by this sync anyway) and begin again.
            log.warning("%s had a weight-update session open (an earlier run's?): ending it first", url)
            await self._end_one(url)
            ok, message = await self._try_success(url, route, body, retries=2)
        if not ok:
            raise SGLangError(f"{url}{proto.ROUTES[route].path} failed: {message}")

    async def _end_one(self, url: str, retries: int = 2) -> None:
        """End `url`'s session, retrying network failures. When an earlier attempt got no answer,
        it may have ended the session already: "no session is open" then counts as ended."""
        route, body = "end_weight_update", proto.end_weight_update_body()
        lost = ""
        for attempt in range(retries + 1):
            try:
                ok, message = await self._try_success(url, route, body)
            except SGLangError as e:
                lost = str(e)
                if attempt < retries:
                    await asyncio.sleep(self._backoff(attempt))
                continue
            if ok or (lost and proto.NO_SESSION_OPEN in message):
                return
            raise SGLangError(f"{url}{proto.ROUTES[route].path} failed: {message}")
        raise SGLangError(f"{lost} ({retries + 1} attempts)")

    async def begin_weight_update(self) -> None:
        """Open a session on every worker. If any refuses, the sessions opened on the others are
        ended before the error is raised: a session left open would make every later begin on
        that worker fail until it restarts."""
        urls = list(self.worker_urls)
        results = await asyncio.gather(*(self._begin_one(u) for u in urls), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if not failed:
            return
        # Also the failed ones: a begin that timed out may have opened its session all the same
        # (an end where none is open is refused harmlessly).
        ended = await asyncio.gather(*(self._end_one(u) for u in urls), return_exceptions=True)
        for url, r in zip(urls, ended):
            if isinstance(r, BaseException) and proto.NO_SESSION_OPEN not in str(r):
                log.error("ending %s's weight-update session after a failed begin also failed: %s", url, r)
        raise SGLangError("; ".join(str(e) for e in failed)) from failed[0]

    async def end_weight_update(self) -> None:
        await self._on_workers(self._end_one)

    @contextlib.asynccontextmanager
    async def weight_update_session(self):
        """begin_weight_update on every worker ... end_weight_update, also when the body fails
        (an error while ending then is logged, not raised over the original one)."""
        await self.begin_weight_update()
        try:
            yield self
        except BaseException:
            try:
                await self.end_weight_update()
            except Exception as e:  # the first failure is the one to report
                log.error("end_weight_update after a failed update also failed: %s", e)
            raise
        await self.end_weight_update()

    async def update_weights_from_tensor(
        self,
        url: str,
        serialized_named_tensors: Sequence[str],
        *,
        weight_version: Optional[str] = None,
        flush_cache: bool = True,
        timeout_s: Optional[float] = None,
    ) -> None:
        """One worker's tensors (inside weight_update_session)."""
        body = proto.update_weights_from_tensor_body(
            serialized_named_tensors, weight_version=weight_version, flush_cache=flush_cache
        )
        await self._expect_success(url, "update_weights_from_tensor", body, timeout_s=timeout_s or self.timeout_s)

    async def update_weights_from_distributed(
        self,
        names: Sequence[str],
        dtypes: Sequence[str],
        shapes: Sequence[Sequence[int]],
        *,
        group_name: str = "weight_update_group",
        weight_version: Optional[str] = None,
        flush_cache: bool = True,
        timeout_s: Optional[float] = None,
    ) -> None:
        """Announce a bucket to every worker (inside weight_update_session). The calls return once
        the trainer's broadcast has arrived, so start this as a task, then broadcast, then await."""
        body = proto.update_weights_from_distributed_body(
            names, dtypes, shapes, group_name=group_name, weight_version=weight_version, flush_cache=flush_cache
        )
        await self._on_workers(
            lambda u: self._expect_success(
                u, "update_weights_from_distributed", body, timeout_s=timeout_s or self.timeout_s
            )
        )

    async def update_weights_from_disk(
        self, model_path: str, *, weight_version: Optional[str] = None, timeout_s: Optional[float] = None
    ) -> None:
        """Reload every worker from an HF checkpoint folder (no session needed)."""
        body = proto.update_weights_from_disk_body(model_path, weight_version=weight_version)
        await self._on_workers(
            lambda u: self._expect_success(u, "update_weights_from_disk", body, timeout_s=timeout_s or self.timeout_s)
        )

    async def init_weights_update_group(
        self,
        master_address: str,
        master_port: int,
        world_size: int,
        rank_offsets: Mapping[str, int],
        *,
        group_name: str = "weight_update_group",
        backend: str = "nccl",
        timeout_s: Optional[float] = None,
    ) -> None:
        """Every worker joins the trainer's NCCL group (the trainer is rank 0 and must join too,
        concurrently: these calls return once the group has formed)."""

        def one(url):
            body = proto.init_weights_update_group_body(
                master_address, master_port, rank_offsets[url], world_size, group_name=group_name, backend=backend
            )
            return self._expect_success(url, "init_weights_update_group", body, timeout_s=timeout_s or self.timeout_s)

        await self._on_workers(one)

    async def destroy_weights_update_group(self, group_name: str = "weight_update_group") -> None:
        body = proto.destroy_weights_update_group_body(group_name)
        await self._on_workers(lambda u: self._expect_success(u, "destroy_weights_update_group", body))
