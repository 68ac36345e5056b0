"""The fake SGLang 0.5.23 worker's answers: its state and one HTTP handler for every route
(tests/support/fake_sglang.py starts it as a process and parses its command line).

Routes, in SGLang 0.5.23's shapes (chord_megatron/rollout/sglang/protocol.py): /health,
/health_generate, /model_info, /server_info (and their deprecated /get_* twins), /generate
(prompt-major lists, [logprob, token_id, null] entries, finish_reason objects, weight_version),
/flush_cache (400 while requests run), /abort_request, /pause_generation, /continue_generation,
the weight-update routes with the begin/end session that /update_weights_from_tensor and
/update_weights_from_distributed require, and /release_memory_occupation /
/resume_memory_occupation (with --enable-memory-saver; released regions refuse what would touch
them on a real GPU: /generate, and weight updates while the weights are released).

When the sglang wheel is installed, /generate bodies go through SGLang's own contract gate
(`api_types.GenerateRequest`), so a body the real server would refuse gets the same 400 here.
Sampled tokens are a function of (prompt, sample index), or of (prompt, sampling_seed) for a
seeded request: a test can tell which prompt a response answers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

EOS = 2


def _load_contract():
    """SGLang's /generate contract check, or None when the wheel is absent."""
    try:
        spec = importlib.util.find_spec("sglang")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / "api" / "v1" / "api_types.py"
        mspec = importlib.util.spec_from_file_location("_fake_sglang_api_types", path)
        module = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(module)
        return module
    except Exception:  # msgspec missing or a different layout: run without the check
        return None


def sample_tokens(prompt, j, max_new_tokens, stop_token_ids, vocab):
    """The tokens 'sampled' for sample j of `prompt`, and how it finished."""
    base = sum(prompt) * 31 + len(prompt)
    stop = stop_token_ids[0] if stop_token_ids else None
    # Some samples end early on the stop token, so both finish reasons occur.
    length = max_new_tokens if stop is None or (base + j) % 3 else max(1, max_new_tokens // 2)
    toks = [(base + 7 * j + 13 * k) % vocab for k in range(length)]
    if stop is not None:
        toks = [t if t != stop else (t + 1) % vocab for t in toks]
        if length < max_new_tokens:
            toks[-1] = stop
            return toks, {"type": "stop", "matched": stop}
    return toks, {"type": "length", "length": length}


def token_logprob(tok, k):
    return -0.05 - ((tok * 3 + k) % 11) / 10.0


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.generate_received = 0
        self.generate_served = 0
        self.generate_disconnected = 0  # requests abandoned by their client while being served
        self.in_flight = 0
        self.malformed_left = args.malformed
        self.flush_busy_left = args.flush_busy
        self.refuse_distributed_after_s = args.refuse_distributed_after_s
        self.drop_end_answers = args.drop_end_answers
        self.abort_epoch = 0
        self.paused = False
        self.health_while_paused = 0  # /health requests that came in while paused
        self.session_open = False
        self.weight_version = args.weight_version
        self.weight_updates = []
        self.group = None
        self.group_pg = None  # a real process group when --join-groups
        self.received = {}  # name -> [dtype, shape, sum, first values] of broadcast tensors
        self.requests = []  # (path, body) of every POST, for tests
        self.released = set()  # memory regions released by /release_memory_occupation
        self.contract = _load_contract()

    def starting(self):
        return time.monotonic() - self.started < self.args.starting_s


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State = None  # set in serve()

    def log_message(self, *a):  # keep test output clean
        pass

    # -- helpers -------------------------------------------------------------------------------
    def _send(self, status, payload=None, raw=None, content_type="application/json"):
        data = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return {}
        return json.loads(raw)

    def _client_gone(self) -> bool:
        """The client closed the connection (readable, and reading would return nothing)."""
        import select
        import socket

        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # -- routes --------------------------------------------------------------------------------
    def do_GET(self):
        s = self.state
        path = self.path.split("?")[0]
        if path in ("/health", "/health_generate") and s.paused and s.args.paused_health_s is not None:
            # As SGLang 0.5.23 does: /health generates a token, which waits while generation is
            # paused; after SGLANG_HEALTH_CHECK_TIMEOUT (20 s) it gives up with 503.
            deadline = time.monotonic() + s.args.paused_health_s
            while s.paused and time.monotonic() < deadline:
                time.sleep(0.01)
            with s.lock:
                s.health_while_paused += 1
            return self._send(503 if s.paused else 200, raw=b"")
        if path in ("/health", "/health_generate", "/ready"):
            return self._send(503 if s.starting() else 200, raw=b"")
        if path in ("/model_info", "/get_model_info"):
            return self._send(
                200,
                {
                    "model_path": s.args.model_path,
                    "served_model_name": s.args.model_path,
                    "tokenizer_path": s.args.model_path,
                    "is_generation": True,
                    "preferred_sampling_params": None,
                    "weight_version": s.weight_version,
                    "load_format": None,
                    "reasoning_parser": None,
                    "tool_call_parser": None,
                    "model_type": "qwen2",
                    "architectures": ["Qwen2ForCausalLM"],
                },
            )
        if path in ("/server_info", "/get_server_info"):
            return self._send(
                200,
                {
                    "model_path": s.args.model_path,
                    "served_model_name": s.args.model_path,
                    "tokenizer_path": s.args.model_path,
                    "max_context_length": 4096,
                    "version": "0.5.23",
                    "internal_states": [{}],
                    "host": s.args.host,
                    "port": s.args.port,
                    "frontend": "python",
                    "tp_size": s.args.tp_size,
                    "base_gpu_id": s.args.base_gpu_id,
                    "gpu_id_step": 1,
                    "dp_size": s.args.dp_size,
                    "pp_size": s.args.pp_size,
                    "enable_memory_saver": s.args.enable_memory_saver,
                },
            )
        if path == "/flush_cache":
            return self._flush()
        if path == "/_fake/stats":
            with s.lock:
                return self._send(
                    200,
                    {
                        "generate_received": s.generate_received,
                        "generate_served": s.generate_served,
                        "generate_disconnected": s.generate_disconnected,
                        "in_flight": s.in_flight,
                        "paused": s.paused,
                        "health_while_paused": s.health_while_paused,
                        "session_open": s.session_open,
                        "weight_version": s.weight_version,
                        "weight_updates": s.weight_updates,
                        "requests": s.requests,
                        "group": s.group,
                        "received": s.received,
                        "released": sorted(s.released),
                    },
                )
        return self._send(404, {"detail": "Not Found"})

    def do_POST(self):
        s = self.state
        path = self.path.split("?")[0]
        try:
            body = self._body()
        except ValueError as e:
            return self._send(400, {"error": {"message": f"invalid JSON body: {e}"}})
        with s.lock:
            s.requests.append([path, body])
        if path == "/generate":
            with s.lock:
                released = sorted(s.released)
            if released:  # a real server would read unmapped memory
                return self._send(400, {"error": {"message": f"fake: /generate while {released} released"}})
            return self._generate(body)
        if path in ("/release_memory_occupation", "/resume_memory_occupation"):
            return self._memory_occupation(path, body)
        if path == "/flush_cache":
            return self._flush()
        if path == "/abort_request":
            with s.lock:
                if body.get("abort_all"):
                    s.abort_epoch += 1
            return self._send(200, raw=b"")
        if path == "/pause_generation":
            with s.lock:
                s.paused = True
                if body.get("mode", "abort") == "abort":
                    s.abort_epoch += 1
            return self._send(200, {"message": "Generation paused successfully.", "status": "ok"})
        if path == "/continue_generation":
            with s.lock:
                s.paused = False
            return self._send(200, {"message": "Generation continued successfully.", "status": "ok"})
        if path == "/begin_weight_update":
            if s.args.refuse_begin:
                return self._fail("refused (fault injection: --refuse-begin)")
            with s.lock:
                was, s.session_open = s.session_open, True
            # SGLang's own messages (scheduler_components/weight_updater.py): one session at a time.
            if was:
                return self._fail("a weight-update session is already open; call end_weight_update() first")
            return self._ok("Success")
        if path == "/end_weight_update":
            with s.lock:
                was, s.session_open = s.session_open, False
                drop = s.drop_end_answers > 0
                s.drop_end_answers = max(0, s.drop_end_answers - 1)
            if drop:  # the session is ended, but the answer is lost on the way
                self.close_connection = True
                return None
            if not was:
                return self._fail("no weight-update session is open; call begin_weight_update() first")
            return self._ok("Success")
        if path in ("/update_weights_from_tensor", "/update_weights_from_distributed"):
            key = "serialized_named_tensors" if path.endswith("tensor") else "names"
            if key not in body:
                return self._fail(f"missing field {key}")
            with s.lock:
                if "weights" in s.released:
                    return self._fail("fake: weights are released (resume them before an update)")
                if not s.session_open:
                    return self._fail("call /begin_weight_update before updating weights")
                if path.endswith("distributed") and s.group is None:
                    return self._fail("no weights update group: call /init_weights_update_group first")
            if path.endswith("distributed") and s.refuse_distributed_after_s is not None:
                with s.lock:
                    after_s = s.refuse_distributed_after_s
                    if s.args.refuse_distributed_times:  # only the first N are refused, then it recovers
                        s.args.refuse_distributed_times -= 1
                        if not s.args.refuse_distributed_times:
                            s.refuse_distributed_after_s = None
                time.sleep(after_s)  # a late refusal: the data is never taken
                return self._fail("refused (fault injection: --refuse-distributed-after-s)")
            if path.endswith("distributed") and s.group_pg is not None:
                self._receive(body)
            with s.lock:
                s.weight_updates.append(
                    {
                        "route": path,
                        "weight_version": body.get("weight_version"),
                        "names": body.get("names"),
                        "flush_cache": body.get("flush_cache"),
                        "payloads": len(body.get("serialized_named_tensors") or []),
                    }
                )
                if body.get("weight_version") is not None:
                    s.weight_version = body["weight_version"]
            return self._ok("Succeeded to update parameter online.")
        if path == "/update_weights_from_disk":
            if "model_path" not in body:
                return self._fail("missing field model_path")
            if "weights" in s.released:
                return self._fail("fake: weights are released (resume them before an update)")
            with s.lock:
                s.weight_updates.append({"route": path, "weight_version": body.get("weight_version")})
                if body.get("weight_version") is not None:
                    s.weight_version = body["weight_version"]
            return self._send(
                200, {"success": True, "message": "Succeeded to update model weights.", "num_paused_requests": 0}
            )
        if path == "/init_weights_update_group":
            missing = [k for k in ("master_address", "master_port", "rank_offset", "world_size") if k not in body]
            if missing:
                return self._fail(f"missing fields {missing}")
            if s.args.join_groups:
                # Join for real, with SGLang's own rendezvous code read from the wheel.
                from tests.support.sglang_contract import sglang_init_custom_process_group

                s.group_pg = sglang_init_custom_process_group()(
                    backend=body.get("backend", "nccl"),
                    init_method=f"tcp://{body['master_address']}:{body['master_port']}",
                    world_size=body["world_size"],
                    rank=body["rank_offset"],
                    group_name=body.get("group_name", "weight_update_group"),
                )
            with s.lock:
                s.group = body.get("group_name", "weight_update_group")
            return self._ok("Succeeded to initialize custom process group.")
        if path == "/destroy_weights_update_group":
            with s.lock:
                s.group = None
                pg, s.group_pg = s.group_pg, None
            if pg is not None:  # as SGLang does: the name and the group are released
                import torch.distributed as dist

                try:
                    dist.destroy_process_group(pg)
                except Exception as e:
                    return self._fail(f"Failed to destroy custom process group: {e}.")
            return self._ok("Succeeded to destroy custom process group.")
        if path == "/update_weight_version":
            with s.lock:
                s.weight_version = body["new_version"]
            return self._send(200, {"success": True, "message": "ok", "new_version": body["new_version"]})
        return self._send(404, {"detail": "Not Found"})

    do_PUT = do_POST

    def _receive(self, body):
        """Take the broadcasts announced by an /update_weights_from_distributed body, in order."""
        import torch
        import torch.distributed as dist

        s = self.state
        for name, dtype, shape in zip(body["names"], body["dtypes"], body["shapes"]):
            t = torch.empty(shape, dtype=getattr(torch, dtype))
            dist.broadcast(t, src=0, group=s.group_pg)
            s.received[name] = [dtype, list(shape), float(t.double().sum()), t.flatten()[:4].tolist()]

    def _memory_occupation(self, path, body):
        """SGLang 0.5.23 (scheduler_components/weight_updater.py): release asserts an idle server;
        no tags means every region; without --enable-memory-saver nothing is freed, yet the
        answer is 200 (null); a second release or a resume of what is not released fails."""
        s = self.state
        tags = set(body.get("tags") or ("kv_cache", "weights", "cuda_graph"))
        with s.lock:
            if path.startswith("/release"):
                if s.in_flight:
                    msg = "release_memory_occupation should be called only when server is idle."
                    return self._send(400, {"error": {"message": msg}})
                if s.args.enable_memory_saver:
                    if tags & s.released:
                        return self._send(400, {"error": {"message": f"already released: {sorted(tags & s.released)}"}})
                    s.released |= tags
            elif s.args.enable_memory_saver:
                if tags - s.released:
                    return self._send(400, {"error": {"message": f"KeyError: {sorted(tags - s.released)}"}})
                s.released -= tags
        return self._send(200, raw=b"null")

    def _ok(self, message):
        self._send(200, {"success": True, "message": message})

    def _fail(self, message):
        self._send(400, {"success": False, "message": message})

    def _flush(self):
        s = self.state
        with s.lock:
            busy = s.in_flight > 0 or s.flush_busy_left > 0
            s.flush_busy_left = max(0, s.flush_busy_left - 1)
        if busy:
            return self._send(
                400, raw=b"Flush cache failed: there are running or waiting requests.\n", content_type="text/plain"
            )
        return self._send(200, raw=b"Cache flushed.\n", content_type="text/plain")

    def _generate(self, body):
        s = self.state
        if s.starting():
            return self._send(503, {"error": {"message": "The server is starting."}})
        if s.contract is not None:
            try:
                s.contract.GenerateRequest.from_json_value(body)
            except s.contract.JsonContractError as e:
                return self._send(400, {"error": str(e)})
        with s.lock:
            s.generate_received += 1
            n_received = s.generate_received
            malformed = s.malformed_left > 0
            s.malformed_left = max(0, s.malformed_left - 1)
            s.in_flight += 1
            epoch = s.abort_epoch
        try:
            if s.args.die_after and n_received >= s.args.die_after:
                os._exit(3)  # die without answering, like a crashed server
            deadline = time.monotonic() + 60.0
            while s.paused and time.monotonic() < deadline:  # a paused server queues new work
                time.sleep(0.01)
            aborted = False
            end = time.monotonic() + s.args.delay_s
            while time.monotonic() < end:
                if s.abort_epoch != epoch:
                    aborted = True
                    break
                if self._client_gone():  # as SGLang does: a request nobody waits for is aborted
                    with s.lock:
                        s.generate_disconnected += 1
                    self.close_connection = True
                    return None
                time.sleep(0.005)
            if malformed:
                return self._send(200, raw=b'{"text": "truncated", "meta_info": {"id": ')
            if n_received <= s.args.abort_generates:  # as if /abort_request or a pause cut it
                aborted = True
            return self._send(200, self._outputs(body, aborted))
        finally:
            with s.lock:
                s.in_flight -= 1
                s.generate_served += 1

    def _outputs(self, body, aborted):
        s = self.state
        ids = body.get("input_ids")
        batch = bool(ids) and isinstance(ids[0], list)
        prompts = ids if batch else [ids]
        sp = body.get("sampling_params") or {}
        sps = sp if isinstance(sp, list) else [sp] * len(prompts)
        outs = []
        for i, prompt in enumerate(prompts):
            p = sps[i]
            n = p.get("n", 1)
            for j in range(n):
                # A seeded request draws the sample its seed names (SGLang's sampling_seed
                # with deterministic inference): the same seed, the same sample.
                draw = j if p.get("sampling_seed") is None else p["sampling_seed"] % 1009
                toks, finish = sample_tokens(
                    prompt, draw, p.get("max_new_tokens", 128), p.get("stop_token_ids") or [], s.args.vocab
                )
                if aborted:
                    toks = toks[: len(toks) // 2]
                    finish = {"type": "abort", "message": "Abort request", "status_code": 200, "err_type": None}
                meta = {
                    "id": f"{s.args.port}-{i}-{j}",
                    "finish_reason": finish,
                    "prompt_tokens": len(prompt),
                    "weight_version": s.weight_version,
                    "completion_tokens": len(toks),
                    "cached_tokens": 0,
                    "e2e_latency": s.args.delay_s,
                }
                if body.get("return_logprob"):
                    meta["output_token_logprobs"] = [[token_logprob(t, k), t, None] for k, t in enumerate(toks)]
                outs.append({"text": "", "output_ids": toks, "meta_info": meta})
        return outs if (batch or len(outs) > 1) else outs[0]
