"""SGLang 0.5.23's HTTP wire format: the routes we call, request bodies, response parsing.

Pure functions, no I/O; `client.py` sends what these build. Each body builder is checked
by tests against SGLang's own request types from the pinned wheel (`sglang/api/v1/api_types.py`
for /generate and /abort_request, `sglang/srt/managers/io_struct.py` for the control routes, the
route table against `sglang/srt/entrypoints/http_server.py`), see tests/support/sglang_contract.py.

Facts of 0.5.23 this module encodes:
  * /generate rejects unknown `sampling_params` keys with 400 (it is `max_new_tokens`, never
    `max_tokens`); other request keys are ignored.
  * one prompt with `n` > 1 (or a list of prompts) answers a JSON list, prompt-major;
  * `meta_info.output_token_logprobs` = [[logprob, token_id, text|null], ...], temperature-scaled;
    a logprob may be null (the first entry in some paths) -- kept as NaN and counted;
  * `meta_info.finish_reason` is {"type": "stop"|"length"|"abort", ...}; older servers and some
    paths send a bare string or null, all accepted here;
  * `meta_info.weight_version` names the weights that served the request;
  * the control routes answer {"success": bool, "message": str}; errors come as
    {"error": {"message": ...}}, {"error": "..."}, FastAPI's {"detail": ...} or plain text.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # engine.py imports torch; this module stays light for the contract checks
    from ..engine import SamplingParams


@dataclass(frozen=True)
class Route:
    path: str
    method: str
    request_type: Optional[str]  # SGLang's class for the body (api_types or io_struct), None = no body


ROUTES: Dict[str, Route] = {
    "generate": Route("/generate", "POST", "GenerateRequest"),
    "health": Route("/health", "GET", None),
    "health_generate": Route("/health_generate", "GET", None),
    "model_info": Route("/model_info", "GET", None),
    "server_info": Route("/server_info", "GET", None),
    "flush_cache": Route("/flush_cache", "POST", None),
    "abort_request": Route("/abort_request", "POST", "AbortReq"),
    "pause_generation": Route("/pause_generation", "POST", "PauseGenerationReqInput"),
    "continue_generation": Route("/continue_generation", "POST", "ContinueGenerationReqInput"),
    "begin_weight_update": Route("/begin_weight_update", "POST", "BeginWeightUpdateReqInput"),
    "end_weight_update": Route("/end_weight_update", "POST", "EndWeightUpdateReqInput"),
    "update_weights_from_tensor": Route("/update_weights_from_tensor", "POST", "UpdateWeightsFromTensorReqInput"),
    "update_weights_from_distributed": Route(
        "/update_weights_from_distributed", "POST", "UpdateWeightsFromDistributedReqInput"
    ),
    "update_weights_from_disk": Route("/update_weights_from_disk", "POST", "UpdateWeightFromDiskReqInput"),
    "init_weights_update_group": Route("/init_weights_update_group", "POST", "InitWeightsUpdateGroupReqInput"),
    "destroy_weights_update_group": Route("/destroy_weights_update_group", "POST", "DestroyWeightsUpdateGroupReqInput"),
    "update_weight_version": Route("/update_weight_version", "POST", "UpdateWeightVersionReqInput"),
    "release_memory_occupation": Route("/release_memory_occupation", "POST", "ReleaseMemoryOccupationReqInput"),
    "resume_memory_occupation": Route("/resume_memory_occupation", "POST", "ResumeMemoryOccupationReqInput"),
}

PAUSE_MODES = ("abort", "retract", "in_place")


class MalformedResponse(ValueError):
    """A response that does not have the shape SGLang 0.5.23 promises."""


# ----------------------------------------------------------------------------------------------
# Request bodies
# ----------------------------------------------------------------------------------------------
def sampling_params_body(params: "SamplingParams", n: int = 1, sampling_seed: Optional[int] = None) -> Dict[str, Any]:
    """SGLang's `sampling_params` for `params`, `n` samples of one prompt.

    `params.seed` is not sent as such: SGLang's `sampling_seed` gives all `n` samples of a request
    the same random stream, which would make a GRPO group degenerate. Seeded sampling sends one
    request per sample, each with its own `sampling_seed` (see SGLangEngine(seeded=True))."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if sampling_seed is not None and n != 1:
        raise ValueError("a sampling_seed applies to every sample of a request: seed requests of n=1")
    body: Dict[str, Any] = {
        "max_new_tokens": int(params.max_new_tokens),
        "temperature": float(params.temperature),
        "top_p": float(params.top_p),
        "n": int(n),
    }
    if params.stop_token_ids:
        body["stop_token_ids"] = [int(t) for t in params.stop_token_ids]
    if sampling_seed is not None:
        body["sampling_seed"] = int(sampling_seed)
    return body


def generate_body(
    input_ids: Sequence[int], params: "SamplingParams", n: int = 1, sampling_seed: Optional[int] = None
) -> Dict[str, Any]:
    """A /generate body for one prompt given as token ids, asking for sampled-token log-probs."""
    ids = [int(t) for t in input_ids]
    if not ids:
        raise ValueError("generate_body: empty prompt")
    return {
        "input_ids": ids,
        "sampling_params": sampling_params_body(params, n, sampling_seed),
        "return_logprob": True,
        # Token ids only: text in every log-prob entry would cost a detokenisation per token.
        "return_text_in_logprobs": False,
        "stream": False,
    }


def abort_all_body() -> Dict[str, Any]:
    return {"rid": "", "abort_all": True}


def pause_body(mode: str = "abort") -> Dict[str, Any]:
    """abort: running requests return finish_reason abort; retract: they go back to the queue and
    resume after /continue_generation; in_place: they stay in the batch (then /flush_cache fails)."""
    if mode not in PAUSE_MODES:
        raise ValueError(f"pause mode must be one of {PAUSE_MODES}, got {mode!r}")
    return {"mode": mode}


def continue_body() -> Dict[str, Any]:
    return {}


# SGLang's refusals of a begin while a session is open and of an end while none is (its
# scheduler_components/weight_updater.py); the client recognises a stale session by them.
SESSION_ALREADY_OPEN = "a weight-update session is already open"
NO_SESSION_OPEN = "no weight-update session is open"


# What /release_memory_occupation can free on a server started with --enable-memory-saver:
# the KV cache pool and the weights (SGLang 0.5.23 also knows "cuda_graph", which frees nothing
# unless SGLANG_MEMORY_SAVER_CUDA_GRAPH is set, and then can hang NCCL graph registrations).
# Released weights come back as garbage: only a full weight update may follow.
MEMORY_TAGS = ("kv_cache", "weights")


def memory_occupation_body(tags: Sequence[str]) -> Dict[str, Any]:
    """Body of /release_memory_occupation and /resume_memory_occupation: which regions. No tags
    would mean every region to SGLang, so an empty list is refused here."""
    bad = [t for t in tags if t not in MEMORY_TAGS]
    if bad or not tags:
        raise ValueError(f"memory tags must be a non-empty subset of {MEMORY_TAGS}, got {list(tags)}")
    return {"tags": list(tags)}


def begin_weight_update_body() -> Dict[str, Any]:
    return {"selector": "all"}


def end_weight_update_body() -> Dict[str, Any]:
    return {}


def update_weights_from_tensor_body(
    serialized_named_tensors: Sequence[str],
    *,
    weight_version: Optional[str] = None,
    load_format: Optional[str] = None,
    flush_cache: bool = True,
) -> Dict[str, Any]:
    """`serialized_named_tensors`: one base64 string per tensor-parallel rank of the server, each
    SGLang's MultiprocessingSerializer output (made by weight_sync/tensor.py)."""
    if not serialized_named_tensors or not all(isinstance(s, str) for s in serialized_named_tensors):
        raise ValueError("serialized_named_tensors must be a non-empty list of base64 strings")
    body: Dict[str, Any] = {
        "serialized_named_tensors": list(serialized_named_tensors),
        "flush_cache": bool(flush_cache),
    }
    if load_format is not None:
        body["load_format"] = load_format
    if weight_version is not None:
        body["weight_version"] = str(weight_version)
    return body


def update_weights_from_distributed_body(
    names: Sequence[str],
    dtypes: Sequence[str],
    shapes: Sequence[Sequence[int]],
    *,
    group_name: str = "weight_update_group",
    weight_version: Optional[str] = None,
    load_format: Optional[str] = None,
    flush_cache: bool = True,
) -> Dict[str, Any]:
    """Announce one bucket of tensors that rank 0 of the trainer then broadcasts, in this order.
    dtypes are torch names without the prefix ("bfloat16", "float32")."""
    if not (len(names) == len(dtypes) == len(shapes)) or not names:
        raise ValueError(
            f"names, dtypes and shapes must be non-empty and equally long, got {len(names)}, {len(dtypes)}, {len(shapes)}"
        )
    body: Dict[str, Any] = {
        "names": [str(n) for n in names],
        "dtypes": [str(d).replace("torch.", "") for d in dtypes],
        "shapes": [[int(s) for s in shape] for shape in shapes],
        "group_name": group_name,
        "flush_cache": bool(flush_cache),
    }
    if load_format is not None:
        body["load_format"] = load_format
    if weight_version is not None:
        body["weight_version"] = str(weight_version)
    return body


def update_weights_from_disk_body(
    model_path: str, *, weight_version: Optional[str] = None, load_format: Optional[str] = None
) -> Dict[str, Any]:
    body: Dict[str, Any] = {"model_path": str(model_path)}
    if load_format is not None:
        body["load_format"] = load_format
    if weight_version is not None:
        body["weight_version"] = str(weight_version)
    return body


def init_weights_update_group_body(
    master_address: str,
    master_port: int,
    rank_offset: int,
    world_size: int,
    *,
    group_name: str = "weight_update_group",
    backend: str = "nccl",
) -> Dict[str, Any]:
    """The trainer is rank 0 of the group; this server's GPUs join as ranks rank_offset + i."""
    return {
        "master_address": str(master_address),
        "master_port": int(master_port),
        "rank_offset": int(rank_offset),
        "world_size": int(world_size),
        "group_name": group_name,
        "backend": backend,
    }


def destroy_weights_update_group_body(group_name: str = "weight_update_group") -> Dict[str, Any]:
    return {"group_name": group_name}


def update_weight_version_body(new_version: str, abort_all_requests: bool = False) -> Dict[str, Any]:
    return {"new_version": str(new_version), "abort_all_requests": bool(abort_all_requests)}


# ----------------------------------------------------------------------------------------------
# Responses
# ----------------------------------------------------------------------------------------------
@dataclass
class GeneratedSample:
    """One element of a /generate answer, normalised."""

    output_ids: List[int]
    logprobs: List[float]  # NaN where the server sent null
    finish_reason: str  # stop | length | abort
    matched: Any = None  # the stop token / string that ended it, if any
    weight_version: Optional[str] = None
    missing_logprobs: int = 0
    meta: Dict[str, Any] = field(default_factory=dict)  # id, cached_tokens, e2e_latency, abort message


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        snippet = text[:120].replace("\n", " ")
        raise MalformedResponse(f"not JSON ({e.msg} at char {e.pos}): {snippet!r}") from None


def normalize_finish_reason(
    raw: Any, n_tokens: int, max_new_tokens: Optional[int] = None
) -> Tuple[str, Any, Optional[str]]:
    """(kind, matched, message) from any form SGLang sends.

    null means the server did not say how the request ended: it is "length" when the token budget
    is used up, otherwise "abort" (never trained on as a complete answer)."""
    if raw is None:
        if max_new_tokens is not None and n_tokens >= max_new_tokens:
            return "length", None, None
        return "abort", None, "finish_reason was null"
    if isinstance(raw, str):
        kind, matched, message = raw, None, None
    elif isinstance(raw, dict):
        kind = raw.get("type")
        matched = raw.get("matched")
        message = raw.get("message")
    else:
        raise MalformedResponse(f"finish_reason has type {type(raw).__name__}: {raw!r}")
    if kind not in ("stop", "length", "abort"):
        raise MalformedResponse(f"unknown finish_reason {raw!r}")
    return kind, matched, message


def _parse_logprobs(entries: Any) -> Tuple[List[float], List[int], int]:
    if not isinstance(entries, list):
        raise MalformedResponse(f"output_token_logprobs is {type(entries).__name__}, expected a list")
    logprobs: List[float] = []
    tokens: List[int] = []
    missing = 0
    for i, e in enumerate(entries):
        if not isinstance(e, (list, tuple)) or len(e) != 3:
            raise MalformedResponse(f"output_token_logprobs[{i}] = {e!r}, expected [logprob, token_id, text]")
        lp, tok, _text = e
        if isinstance(tok, bool) or not isinstance(tok, int):
            raise MalformedResponse(f"output_token_logprobs[{i}] token id {tok!r} is not an integer")
        if lp is None:
            missing += 1
            lp = math.nan
        elif isinstance(lp, bool) or not isinstance(lp, (int, float)):
            raise MalformedResponse(f"output_token_logprobs[{i}] logprob {lp!r} is not a number")
        logprobs.append(float(lp))
        tokens.append(tok)
    return logprobs, tokens, missing


def parse_generate_item(item: Any, max_new_tokens: Optional[int] = None) -> GeneratedSample:
    """One response object {"text", "output_ids", "meta_info": {...}}."""
    if not isinstance(item, dict):
        raise MalformedResponse(f"a response item is {type(item).__name__}, expected an object")
    if "error" in item:
        raise MalformedResponse(f"the server reported an error: {error_message(item)}")
    meta = item.get("meta_info")
    if not isinstance(meta, dict):
        raise MalformedResponse("response has no meta_info object")
    if meta.get("output_token_logprobs") is None:
        raise MalformedResponse("meta_info has no output_token_logprobs (was return_logprob sent?)")
    logprobs, lp_tokens, missing = _parse_logprobs(meta["output_token_logprobs"])
    output_ids = item.get("output_ids")
    if output_ids is None:
        output_ids = lp_tokens
    elif not isinstance(output_ids, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in output_ids
    ):
        raise MalformedResponse(f"output_ids is not a list of integers: {str(output_ids)[:80]}")
    elif output_ids != lp_tokens:
        raise MalformedResponse(
            f"output_ids ({len(output_ids)} tokens) and output_token_logprobs ({len(lp_tokens)} entries) disagree"
        )
    kind, matched, message = normalize_finish_reason(meta.get("finish_reason"), len(output_ids), max_new_tokens)
    version = meta.get("weight_version")
    extra = {k: meta[k] for k in ("id", "cached_tokens", "e2e_latency", "prompt_tokens") if k in meta}
    if message:
        extra["finish_message"] = message
    return GeneratedSample(
        output_ids=list(output_ids),
        logprobs=logprobs,
        finish_reason=kind,
        matched=matched,
        weight_version=None if version is None else str(version),
        missing_logprobs=missing,
        meta=extra,
    )


def parse_generate_response(payload: Any, expected: int, max_new_tokens: Optional[int] = None) -> List[GeneratedSample]:
    """The `expected` samples of one /generate answer, in the server's order (prompt-major, then
    sample). A single object is accepted when one sample was asked for."""
    if isinstance(payload, dict):
        if "error" in payload and "meta_info" not in payload:
            raise MalformedResponse(f"the server reported an error: {error_message(payload)}")
        items = [payload]
    elif isinstance(payload, list):
        items = payload
    else:
        raise MalformedResponse(f"/generate answered {type(payload).__name__}, expected an object or a list")
    if len(items) != expected:
        raise MalformedResponse(f"/generate answered {len(items)} samples, expected {expected}")
    return [parse_generate_item(it, max_new_tokens) for it in items]


def error_message(payload: Any) -> str:
    """The human-readable part of an error answer in any of SGLang's (and the router's) forms."""
    if isinstance(payload, (bytes, bytearray)):
        payload = payload.decode("utf-8", "replace")
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            return payload.strip()[:500] or "(empty body)"
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        for key in ("message", "detail"):
            if payload.get(key):
                return str(payload[key])
    return json.dumps(payload)[:500]


def check_success(payload: Any) -> Tuple[bool, str]:
    """(success, message) of a control-route answer {"success": bool, "message": str}."""
    if isinstance(payload, dict) and isinstance(payload.get("success"), bool):
        return payload["success"], str(payload.get("message", ""))
    raise MalformedResponse(f"expected {{'success': bool, 'message': str}}, got {str(payload)[:200]}")


def weight_version_of(model_info: Any) -> Optional[str]:
    """`weight_version` from a /model_info answer (0.5.23 has no /get_weight_version)."""
    if not isinstance(model_info, dict):
        raise MalformedResponse(f"/model_info answered {type(model_info).__name__}, expected an object")
    v = model_info.get("weight_version")
    return None if v is None else str(v)
