"""A fake SGLang 0.5.23 worker for tests and CPU smoke runs, as a process: stdlib only, loopback only.

    python -m tests.support.fake_sglang --port 31001 [--delay-s 0.2] [--starting-s 2]
        [--die-after 5] [--malformed 2] [--flush-busy 1] [--max-lifetime-s 120]

What it answers, route by route, is fake_sglang_routes.py; this module parses the command line,
serves, and starts workers for tests (launch_fake_workers, running, stats). Faults, for the fault
tests: slow answers, 503 while starting, dying on the N-th /generate without answering it,
malformed JSON bodies, aborted /generate answers, a refused /begin_weight_update, lost
/end_weight_update answers. The process exits by itself after --max-lifetime-s so that no test
can leave it behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

# what tests use of the worker's answers, importable from here as before
from tests.support.fake_sglang_routes import EOS, Handler, State, sample_tokens, token_logprob  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]  # the repository: children import tests.support from here


def launch_fake_workers(n, log_dir, args_per_worker=None, timeout_s=20.0):
    """Start n fake workers on free loopback ports (for tests); returns ManagedProcess objects
    with .url set, once each accepts connections (it may still answer 503 while 'starting')."""
    import socket

    from chord_megatron.net import free_port
    from chord_megatron.rollout.sglang.router import ManagedProcess

    workers = []
    try:
        for i in range(n):
            port = free_port()
            extra = list((args_per_worker or {}).get(i, []))
            argv = [sys.executable, "-m", __name__, "--port", str(port), *extra]
            w = ManagedProcess(
                f"fake-sglang-{i}", argv, Path(log_dir) / f"fake-sglang-{i}.log", env=child_env()
            ).start()
            w.url = f"http://127.0.0.1:{port}"
            workers.append(w)
        deadline = time.monotonic() + timeout_s
        for w in workers:
            port = int(w.url.rsplit(":", 1)[1])
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or not w.alive():
                        raise RuntimeError(f"{w.name} did not start: {w.log_tail()}")
                    time.sleep(0.05)
        return workers
    except BaseException:
        for w in workers:
            w.stop()
        raise


@contextlib.contextmanager
def running(n, log_dir, args_per_worker=None, lifetime_s=60):
    """launch_fake_workers(n, ...) for a with-block: each exits by itself after `lifetime_s` and
    is stopped (by PID) when the block ends."""
    extra = args_per_worker or {}
    ws = launch_fake_workers(
        n, log_dir, {i: ["--max-lifetime-s", str(lifetime_s), *extra.get(i, [])] for i in range(n)}
    )
    try:
        yield ws
    finally:
        for w in ws:
            w.stop()


def stats(worker) -> dict:
    """A running fake's /_fake/stats: every POST it got, its session, group and weight version."""
    import urllib.request

    with urllib.request.urlopen(worker.url + "/_fake/stats", timeout=5) as r:
        return json.loads(r.read())


def child_env() -> dict:
    """The environment of a child that runs a tests.support module (`python -m tests.support.x`):
    this process's, with the repository root importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def serve(argv=None, *, handler=None):
    """Parse the command line and serve with `handler` (default: Handler; a subclass adds routes)."""
    handler = handler or Handler
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    # A local folder: sglang-router loads a tokenizer from the model path, and a hub id would send
    # it to the network.
    p.add_argument("--model-path", default=tempfile.gettempdir())
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--weight-version", default="default")
    p.add_argument("--delay-s", type=float, default=0.0, help="time each /generate takes")
    p.add_argument("--starting-s", type=float, default=0.0, help="answer 503 for this long after start")
    p.add_argument("--die-after", type=int, default=0, help="exit on receiving the N-th /generate (0 = never)")
    p.add_argument("--malformed", type=int, default=0, help="answer the first N /generate with broken JSON")
    p.add_argument("--flush-busy", type=int, default=0, help="answer the first N /flush_cache with 400")
    p.add_argument(
        "--paused-health-s",
        type=float,
        default=None,
        help="while paused, /health waits this long and then answers 503 (SGLang: 20 s); default: answers at once",
    )
    p.add_argument("--tp-size", type=int, default=1, help="reported in /server_info")
    p.add_argument("--base-gpu-id", type=int, default=0, help="reported in /server_info")
    p.add_argument("--dp-size", type=int, default=1, help="reported in /server_info")
    p.add_argument("--pp-size", type=int, default=1, help="reported in /server_info")
    p.add_argument(
        "--refuse-distributed-after-s",
        type=float,
        default=None,
        help="answer every /update_weights_from_distributed with an error after this long",
    )
    p.add_argument(
        "--refuse-distributed-times",
        type=int,
        default=0,
        help="with --refuse-distributed-after-s: refuse only the first N (0 = every one)",
    )
    p.add_argument(
        "--abort-generates",
        type=int,
        default=0,
        help="answer the first N /generate with finish_reason abort (half the tokens)",
    )
    p.add_argument("--refuse-begin", action="store_true", help="answer every /begin_weight_update with an error")
    p.add_argument(
        "--enable-memory-saver", action="store_true", help="release_memory_occupation frees (reported in /server_info)"
    )
    p.add_argument(
        "--drop-end-answers",
        type=int,
        default=0,
        help="end the session on the first N /end_weight_update but close the connection unanswered",
    )
    p.add_argument(
        "--join-groups",
        action="store_true",
        help="really join /init_weights_update_group's process group and receive broadcasts (imports torch)",
    )
    p.add_argument("--max-lifetime-s", type=float, default=300.0, help="exit by itself after this long")
    args = p.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("fake_sglang serves on loopback addresses only")
    handler.state = State(args)
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    threading.Timer(args.max_lifetime_s, lambda: os._exit(0)).start()
    print(f"fake sglang worker on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    serve()
