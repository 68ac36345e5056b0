"""Bring up (or find) the SGLang deployment: servers, and sglang-router in front of them.

Three ways in, picked from the rollout config:
  * rollout.router_url set: attach to a running router; the workers come from
    rollout.server_urls or the router's GET /workers;
  * rollout.server_urls set: the servers run already; start a router in front of them;
  * neither: launch rollout.num_servers SGLang servers from the `sglang:` section (their
    command-line options, passed through untouched; `router:` inside it holds the router's),
    then a router over them.

Only processes started here are stopped here, by their process-group id; attached ones are
left alone. The router is started with `python -m sglang_router.launch_router` of ROUTER_PYTHON,
else of this (the trainer's) Python -- as launch/ starts it: `sglang[all]` does not install
sglang-router, the trainer's `gpu` and `test` extras do. Its worker
startup checks default to 30 s intervals, too slow for a short run, so this module sets them
shorter unless `router:` says otherwise.

Health checks and weight syncs: SGLang 0.5.23's /health generates one token, and while a sync
keeps the server paused that token waits; after 20 s (SGLANG_HEALTH_CHECK_TIMEOUT) /health
answers 503. sglang-router 0.3.2's defaults (a 5 s check timeout, 3 failures) would drop a
paused server after ~20 s -- and the rollouts after the sync would find no healthy worker. So
the router's checks wait out SGLang's own limit, and the number of failures that marks a worker
unhealthy spans the longest pause a sync may take (SYNC_PAUSE_TOLERANCE_S). A worker that
really died is still caught at once by the router's per-request retries and circuit breaker
(10 failed requests). The same defaults reach the slurm launch (commands/launch/plan.py reads
ROUTER_DEFAULTS into ROUTER_ARGS); `sglang.router` overrides any of them.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ...config_checks import sglang_gpus_per_server
from ...errors import ChordError
from ...net import free_port

SGLANG_HEALTH_TIMEOUT_S = 20.0  # how long SGLang 0.5.23's /health waits for its token (env SGLANG_HEALTH_CHECK_TIMEOUT)
# The longest a weight sync may keep the servers paused without the router dropping them: a
# disk sync of a 7B model (write 15 GB, then every server reads it) fits with room to spare.
SYNC_PAUSE_TOLERANCE_S = 600.0


def health_check_options(pause_s: float = SYNC_PAUSE_TOLERANCE_S, interval_s: float = 5.0) -> Dict[str, Any]:
    """sglang-router health-check flags under which a worker paused for up to `pause_s` stays
    healthy: each check may take as long as SGLang's own /health limit (plus slack), and a worker
    is marked unhealthy only after more consecutive failures than fit into `pause_s`."""
    return {
        "health_check_interval_secs": int(math.ceil(interval_s)),
        "health_check_timeout_secs": int(SGLANG_HEALTH_TIMEOUT_S + 10),
        "health_failure_threshold": int(math.ceil(pause_s / interval_s)) + 1,
    }


ROUTER_DEFAULTS: Dict[str, Any] = {
    "policy": "cache_aware",  # keeps a prompt's samples on one worker: the prefix is cached once
    "worker_startup_check_interval": 1,
    **health_check_options(),
}


class DeploymentError(ChordError, RuntimeError):
    pass


def cli_flags(options: Mapping[str, Any]) -> List[str]:
    """{"tp_size": 2, "enable_x": True, "y": None, "urls": [a, b]} -> --tp-size 2 --enable-x --urls a b.
    False and None leave the flag out."""
    out: List[str] = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            out.append(flag)
            out.extend(str(v) for v in value)
        else:
            out.extend([flag, str(value)])
    return out


def router_python() -> List[str]:
    """The command of the Python that runs sglang-router (module docstring)."""
    configured = os.environ.get("ROUTER_PYTHON", "").strip()
    return shlex.split(configured) if configured else [sys.executable]


def router_command(worker_urls: Sequence[str], *, host: str, port: int, options: Mapping[str, Any] = ()) -> List[str]:
    opts = dict(ROUTER_DEFAULTS)
    opts.update(options or {})
    # Its Prometheus exporter binds 0.0.0.0:29000 by default: two routers on one node collide.
    opts.setdefault("prometheus_host", host)
    opts.setdefault("prometheus_port", free_port(host))
    return [
        *router_python(),
        "-m",
        "sglang_router.launch_router",
        "--host",
        host,
        "--port",
        str(port),
        "--worker-urls",
        *worker_urls,
        *cli_flags(opts),
    ]


def server_command(*, host: str, port: int, options: Mapping[str, Any]) -> List[str]:
    if "model_path" not in options:
        raise DeploymentError("sglang.model_path is required to launch SGLang servers")
    return [sys.executable, "-m", "sglang.launch_server", "--host", host, "--port", str(port), *cli_flags(options)]


@dataclass
class ManagedProcess:
    """A child started in its own session, so stopping it also stops what it spawned."""

    name: str
    argv: List[str]
    log_path: Path
    env: Optional[Dict[str, str]] = None
    url: Optional[str] = None  # where it serves, once known
    proc: Optional[subprocess.Popen] = None

    def start(self) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                self.argv, stdout=logf, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session: the child leads its own group
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def http_get_json(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 - our own servers
        return json.loads(r.read() or b"null")


def wait_until(check, what: str, timeout_s: float, procs: Sequence[ManagedProcess] = (), interval_s: float = 0.2):
    """Poll check() until it returns a truthy value; fail early if a process we started died."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise DeploymentError(
                    f"{p.name} exited (code {p.proc.returncode}) while waiting for {what}; "
                    f"last log lines:\n{p.log_tail()}"
                )
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError) as e:
            last = e
        time.sleep(interval_s)
    raise DeploymentError(
        f"timed out after {timeout_s:g}s waiting for {what}" + (f" (last error: {last})" if last else "")
    )


def router_workers(router_url: str) -> List[Dict[str, Any]]:
    """The router's view of its workers: [{"url", "is_healthy", ...}] from GET /workers."""
    payload = http_get_json(router_url.rstrip("/") + "/workers")
    return list(payload.get("workers", []))


def attached_router_workers(router_url: str) -> List[Dict[str, Any]]:
    """router_workers of a router someone else runs (rollout.router_url): one that does not
    answer, or answers something other than its worker list, is a DeploymentError naming it."""
    try:
        return router_workers(router_url)
    except urllib.error.HTTPError as e:
        raise DeploymentError(f"rollout.router_url {router_url}: GET /workers answered HTTP {e.code}") from None
    except urllib.error.URLError as e:
        raise DeploymentError(
            f"rollout.router_url {router_url}: {e.reason} (is sglang-router running there?)"
        ) from None
    except (OSError, ValueError, AttributeError) as e:  # a timeout; not JSON; JSON but not an object
        what = "not JSON" if isinstance(e, json.JSONDecodeError) else str(e) or type(e).__name__
        raise DeploymentError(
            f"rollout.router_url {router_url}: GET /workers: {what} (is it an sglang-router?)"
        ) from None


def wait_router_ready(router_url: str, n_workers: int, timeout_s: float, procs: Sequence[ManagedProcess] = ()) -> None:
    def ready():
        workers = router_workers(router_url)
        return sum(1 for w in workers if w.get("is_healthy")) >= n_workers

    wait_until(ready, f"{n_workers} healthy workers behind {router_url}", timeout_s, procs)


def check_listening(url: str, key: str) -> None:
    """DeploymentError when nothing accepts connections at `url` (a server still starting, which
    answers 503, passes)."""
    try:
        urllib.request.urlopen(url.rstrip("/") + "/health", timeout=5).close()  # noqa: S310
    except (urllib.error.HTTPError, TimeoutError):  # there, but busy or starting: the wait below decides
        return
    except urllib.error.URLError as e:
        if isinstance(e.reason, OSError) and not isinstance(e.reason, TimeoutError):
            raise DeploymentError(f"{key}: {url}: {e.reason} (is the SGLang server running there?)") from None


def wait_server_healthy(url: str, timeout_s: float, procs: Sequence[ManagedProcess] = ()) -> None:
    def healthy():
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=5) as r:  # noqa: S310
                return r.status == 200
        except urllib.error.HTTPError:
            return False

    wait_until(healthy, f"{url}/health", timeout_s, procs)


@dataclass
class Deployment:
    """Where to send requests, and the processes to stop at the end (empty when attached)."""

    router_url: Optional[str]
    worker_urls: List[str]
    processes: List[ManagedProcess] = field(default_factory=list)

    @property
    def generate_urls(self) -> List[str]:
        return [self.router_url] if self.router_url else list(self.worker_urls)

    def close(self) -> None:
        for p in reversed(self.processes):  # the router first, then the servers
            p.stop()
        self.processes.clear()


def start_router(
    worker_urls: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: Optional[int] = None,
    options: Mapping[str, Any] = (),
    log_dir: Path,
    timeout_s: float = 120.0,
    env: Optional[Dict[str, str]] = None,
    min_healthy: Optional[int] = None,
) -> ManagedProcess:
    """Start sglang-router over `worker_urls` and wait until `min_healthy` (default: all) of them
    are registered healthy; the returned process has .url set."""
    port = port or free_port(host)
    proc = ManagedProcess(
        "sglang-router",
        router_command(worker_urls, host=host, port=port, options=options),
        Path(log_dir) / "router.log",
        env=env,
    ).start()
    proc.url = f"http://{host}:{port}"
    try:
        wait_router_ready(proc.url, len(worker_urls) if min_healthy is None else min_healthy, timeout_s, [proc])
    except BaseException:
        proc.stop()
        raise
    return proc


def server_env(*, release_memory: bool) -> Optional[Dict[str, str]]:
    """The environment of a server chord starts (None: this process's). With memory released
    during training (rollout.release_sglang_memory), /health must not generate: SGLang 0.5.23
    answers it by running a one-token request, which on released memory would read unmapped
    pages; it then checks that the server's processes live. launch/env.sh sets the same."""
    if not release_memory:
        return None
    return {**os.environ, "SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION": "0"}


def deploy(rollout_cfg, sglang_options: Mapping[str, Any], *, log_dir: Path, host: str = "127.0.0.1") -> Deployment:
    """Attach to, or start, what rollout_cfg describes (see the module docstring)."""
    timeout = float(getattr(rollout_cfg, "startup_timeout_s", 900.0))
    options = dict(sglang_options or {})
    router_options = dict(options.pop("router", {}) or {})
    if rollout_cfg.router_url:
        urls = list(rollout_cfg.server_urls) or [w["url"] for w in attached_router_workers(rollout_cfg.router_url)]
        if not urls:
            raise DeploymentError(f"router {rollout_cfg.router_url} has no workers and rollout.server_urls is empty")
        return Deployment(rollout_cfg.router_url.rstrip("/"), urls)
    dep = Deployment(None, list(rollout_cfg.server_urls))
    for url in dep.worker_urls:  # servers said to run already: a wrong URL fails now, not after the startup timeout
        check_listening(url, "rollout.server_urls")
    try:
        if not dep.worker_urls:
            n = int(getattr(rollout_cfg, "num_servers", 1))
            gpus = sglang_gpus_per_server(options)
            env = server_env(release_memory=bool(getattr(rollout_cfg, "release_sglang_memory", False)))
            for i in range(n):
                port = free_port(host)
                opts = dict(options)
                opts.setdefault("base_gpu_id", i * gpus)
                server = ManagedProcess(
                    f"sglang-server-{i}",
                    server_command(host=host, port=port, options=opts),
                    Path(log_dir) / f"sglang-server-{i}.log",
                    env=env,
                ).start()
                dep.processes.append(server)
                dep.worker_urls.append(f"http://{host}:{port}")
            for url in dep.worker_urls:
                wait_server_healthy(url, timeout, dep.processes)
        router = start_router(dep.worker_urls, host=host, options=router_options, log_dir=log_dir, timeout_s=timeout)
        dep.processes.append(router)
        dep.router_url = router.url
        return dep
    except BaseException:
        dep.close()
        raise
