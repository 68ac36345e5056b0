"""SGLang 0.5.23 wire format: request bodies checked against SGLang's own types from the pinned
wheel (installed with `pip install --no-deps sglang==0.5.23 msgspec`), and the response parser
fed answers encoded by SGLang's own response types."""

import json
import math

import pytest

from chord_megatron.rollout.engine import SamplingParams
from chord_megatron.rollout.sglang import protocol as proto
from chord_megatron.rollout.sglang.protocol import MalformedResponse
from tests.support import sglang_contract as contract

if not contract.available():  # pragma: no cover - the install step was left out
    pytest.skip("needs `pip install --no-deps sglang==0.5.23` and msgspec", allow_module_level=True)
api = contract.load_api_types()

SP = SamplingParams(max_new_tokens=16, temperature=0.7, top_p=0.95, stop_token_ids=(2, 7))


def test_pinned_wheel_is_0_5_23():
    assert contract.sglang_version() == "0.5.23"


# ----------------------------------------------------------------------------------------------
# Routes and request bodies
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(proto.ROUTES))
def test_route_exists_with_method_and_body_type(name):
    route = proto.ROUTES[name]
    served = contract.http_routes().get(route.path)
    assert served, f"{route.path} is not a route of SGLang 0.5.23's http_server.py"
    methods = {m: t for m, t in served}
    assert route.method in methods, f"{route.path} does not take {route.method} (takes {sorted(methods)})"
    if route.request_type == "GenerateRequest":
        assert methods["POST"] == "GenerateReqInput"  # checked by the GenerateRequest contract gate
    else:
        assert methods[route.method] == route.request_type


BODIES = {
    "generate": proto.generate_body([1, 2, 3], SP, n=4),
    "abort_request": proto.abort_all_body(),
    "pause_generation": proto.pause_body("retract"),
    "continue_generation": proto.continue_body(),
    "begin_weight_update": proto.begin_weight_update_body(),
    "end_weight_update": proto.end_weight_update_body(),
    "update_weights_from_tensor": proto.update_weights_from_tensor_body(["aGVsbG8=", "d29ybGQ="], weight_version="7"),
    "update_weights_from_distributed": proto.update_weights_from_distributed_body(
        ["model.embed_tokens.weight", "lm_head.weight"],
        ["torch.bfloat16", "float32"],
        [[64, 8], [64, 8]],
        weight_version="7",
    ),
    "update_weights_from_disk": proto.update_weights_from_disk_body("/ckpt/step7", weight_version="7"),
    "init_weights_update_group": proto.init_weights_update_group_body("10.0.0.1", 29555, 1, 9),
    "destroy_weights_update_group": proto.destroy_weights_update_group_body(),
    "update_weight_version": proto.update_weight_version_body("7"),
    "flush_cache": {},
    "release_memory_occupation": proto.memory_occupation_body(["kv_cache", "weights"]),
    "resume_memory_occupation": proto.memory_occupation_body(["weights"]),
}


@pytest.mark.parametrize("name", sorted(BODIES))
def test_request_body_matches_sglang_types(name):
    contract.validate_request(name, BODIES[name])


def test_every_body_route_has_a_checked_builder():
    assert {n for n, r in proto.ROUTES.items() if r.request_type} <= set(BODIES)


def test_generate_body_contents():
    b = BODIES["generate"]
    assert b["input_ids"] == [1, 2, 3] and b["return_logprob"] is True
    assert b["sampling_params"] == {
        "max_new_tokens": 16,
        "temperature": 0.7,
        "top_p": 0.95,
        "n": 4,
        "stop_token_ids": [2, 7],
    }
    assert BODIES["update_weights_from_distributed"]["dtypes"] == ["bfloat16", "float32"]


@pytest.mark.parametrize(
    "route,body,needle",
    [
        ("generate", {"input_ids": [1], "sampling_params": {"max_tokens": 3}}, "unknown field `max_tokens`"),
        ("generate", {"input_ids": [1], "sampling_params": {"temperature": "hot"}}, "expected f64"),
        ("update_weights_from_tensor", {"serialized_named_tensors": ["aGk="], "weight_versoin": "1"}, "weight_versoin"),
        ("update_weights_from_tensor", {"serialized_named_tensors": ["not base64!"]}, "base64"),
        ("update_weights_from_distributed", {"names": ["a"], "dtypes": ["float32"]}, "shapes"),
        (
            "init_weights_update_group",
            {"master_address": "h", "master_port": "1", "rank_offset": 1, "world_size": 2},
            "int",
        ),
        ("pause_generation", {"mode": "stop"}, "stop"),
    ],
)
def test_contract_check_rejects_what_sglang_rejects(route, body, needle):
    with pytest.raises(contract.ContractError, match=needle):
        contract.validate_request(route, body)


def test_builders_refuse_inconsistent_input():
    with pytest.raises(ValueError):
        proto.update_weights_from_distributed_body(["a", "b"], ["float32"], [[1], [2]])
    with pytest.raises(ValueError):
        proto.pause_body("stop")
    with pytest.raises(ValueError):
        proto.generate_body([], SP)


# ----------------------------------------------------------------------------------------------
# Responses, encoded with SGLang's own response types
# ----------------------------------------------------------------------------------------------
def _resp(tokens, logprobs, finish, version="v3"):
    meta = api.GenerateMetaInfo(
        id="r",
        prompt_tokens=3,
        completion_tokens=len(tokens),
        finish_reason=finish,
        weight_version=version,
        output_token_logprobs=[api.LogprobEntry(logprob=lp, token_id=t, text=None) for lp, t in zip(logprobs, tokens)],
    )
    return api.GenerateResponse(text="", output_ids=list(tokens), meta_info=meta).to_json_value()


def test_parse_single_answer():
    payload = json.loads(json.dumps(_resp([5, 9, 2], [-0.5, -1.25, -0.125], api.FinishStop(matched=2))))
    (s,) = proto.parse_generate_response(payload, 1, max_new_tokens=16)
    assert s.output_ids == [5, 9, 2] and s.logprobs == [-0.5, -1.25, -0.125]
    assert (s.finish_reason, s.matched, s.weight_version, s.missing_logprobs) == ("stop", 2, "v3", 0)


def test_parse_batched_list_keeps_order():
    items = [_resp([10 + i, 11 + i], [-0.1 * (i + 1), -0.2], api.FinishLength(length=2)) for i in range(4)]
    out = proto.parse_generate_response(json.loads(json.dumps(items)), 4, max_new_tokens=2)
    assert [s.output_ids[0] for s in out] == [10, 11, 12, 13]
    assert [s.finish_reason for s in out] == ["length"] * 4
    assert out[2].logprobs[0] == pytest.approx(-0.3)


@pytest.mark.parametrize(
    "finish,expected",
    [
        (api.FinishStop(matched=2), "stop"),
        (api.FinishStop(matched="</s>"), "stop"),
        (api.FinishStop(matched=[2, 3]), "stop"),
        (api.FinishLength(length=2), "length"),
        (api.FinishAbort(message="Abort request", status_code=200), "abort"),
    ],
)
def test_parse_every_typed_finish_reason(finish, expected):
    (s,) = proto.parse_generate_response(_resp([4, 2], [-0.1, -0.2], finish), 1, max_new_tokens=8)
    assert s.finish_reason == expected


@pytest.mark.parametrize(
    "raw,n_tokens,expected",
    [
        ("stop", 2, "stop"),
        ("length", 8, "length"),
        ("abort", 1, "abort"),
        ({"type": "stop", "matched": None}, 2, "stop"),
        (None, 8, "length"),  # null with the budget used up: it ran out of tokens
        (None, 3, "abort"),  # null otherwise: unknown ending, never trained on as complete
    ],
)
def test_finish_reason_untyped_forms(raw, n_tokens, expected):
    assert proto.normalize_finish_reason(raw, n_tokens, max_new_tokens=8)[0] == expected


@pytest.mark.parametrize("raw", ["eos", {"type": "cancelled"}, 3])
def test_unknown_finish_reason_is_an_error(raw):
    with pytest.raises(MalformedResponse, match="finish_reason"):
        proto.normalize_finish_reason(raw, 1, 8)


def test_null_first_logprob_is_nan_and_counted():
    payload = _resp([4, 5, 6], [None, -0.5, -0.25], api.FinishLength(length=3))
    assert payload["meta_info"]["output_token_logprobs"][0][0] is None
    (s,) = proto.parse_generate_response(payload, 1, max_new_tokens=3)
    assert math.isnan(s.logprobs[0]) and s.logprobs[1:] == [-0.5, -0.25]
    assert s.missing_logprobs == 1


def test_output_ids_may_be_absent():
    payload = _resp([4, 5], [-0.1, -0.2], api.FinishLength(length=2))
    del payload["output_ids"]
    (s,) = proto.parse_generate_response(payload, 1)
    assert s.output_ids == [4, 5]


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda p: [p, p], "2 samples, expected 1"),
        (lambda p: {**p, "output_ids": [4, 6]}, "disagree"),
        (lambda p: {**p, "meta_info": {**p["meta_info"], "output_token_logprobs": None}}, "return_logprob"),
        (
            lambda p: {**p, "meta_info": {**p["meta_info"], "output_token_logprobs": [[-0.1, 4], [-0.2, 5, None]]}},
            r"\[0\]",
        ),
        (lambda p: {k: v for k, v in p.items() if k != "meta_info"}, "meta_info"),
        (lambda p: "hello", "expected an object or a list"),
    ],
)
def test_malformed_answers_are_rejected(mutate, needle):
    payload = mutate(_resp([4, 5], [-0.1, -0.2], api.FinishLength(length=2)))
    with pytest.raises(MalformedResponse, match=needle):
        proto.parse_generate_response(payload, 1)


def test_non_json_body():
    with pytest.raises(MalformedResponse, match="not JSON"):
        proto.parse_json('{"text": "x", "meta_info": {"id": ')


@pytest.mark.parametrize(
    "body,expected",
    [
        ('{"error": {"message": "prompt too long"}}', "prompt too long"),
        ('{"error": "unknown field `max_tokens`"}', "unknown field `max_tokens`"),
        ('{"detail": "Not Found"}', "Not Found"),
        ('{"success": false, "message": "call begin_weight_update first"}', "call begin_weight_update first"),
        ("Flush cache failed: there are running requests.\n", "Flush cache failed: there are running requests."),
        ("", "(empty body)"),
    ],
)
def test_error_bodies(body, expected):
    assert proto.error_message(body) == expected


def test_error_item_inside_answer_is_reported():
    with pytest.raises(MalformedResponse, match="out of memory"):
        proto.parse_generate_response({"error": {"message": "out of memory"}}, 1)


def test_weight_version_from_model_info_and_success_check():
    assert proto.weight_version_of({"model_path": "m", "weight_version": "12"}) == "12"
    assert proto.weight_version_of({"model_path": "m", "weight_version": None}) is None
    assert proto.check_success({"success": False, "message": "no"}) == (False, "no")
    with pytest.raises(MalformedResponse):
        proto.check_success({"status": "ok"})


def test_seeded_generate_body_is_sglang_valid_and_one_sample_per_request():
    body = proto.generate_body([1, 2, 3], SP, 1, sampling_seed=2**40 + 3)
    assert body["sampling_params"]["sampling_seed"] == 2**40 + 3 and body["sampling_params"]["n"] == 1
    if contract.available():
        contract.validate_request("generate", body)
    # one seed for n samples would give them all the same random stream
    with pytest.raises(ValueError, match="n=1"):
        proto.generate_body([1, 2, 3], SP, 4, sampling_seed=1)
    assert "sampling_seed" not in proto.generate_body([1, 2, 3], SP, 4)["sampling_params"]
