"""The "tool_call" reward: exact match of the parsed calls, argument order ignored."""

import json

import pytest

from chord_megatron.rewards.tool_call import (
    CallSyntaxError,
    parse_bracket_calls,
    parse_response_calls,
    tool_call_reward,
)

WEATHER = [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]


def score(response, answer=WEATHER, **meta):
    return tool_call_reward("", response, {"answer": json.dumps(answer), **meta})


def block(calls):
    return f"<tool_call>{json.dumps(calls)}</tool_call>"


@pytest.mark.parametrize(
    "response,expected",
    [
        (block(WEATHER), 1.0),
        (block([{"name": "get_weather", "arguments": {"days": 3, "city": "Paris"}}]), 1.0),  # argument order
        (block({"name": "get_weather", "arguments": {"city": "Paris", "days": 3.0}}), 1.0),  # one object; 3 == 3.0
        ("Let me look.\n" + block(WEATHER) + "\n", 1.0),
        (block([{"name": "get_weather", "arguments": '{"city": "Paris", "days": 3}'}]), 1.0),  # OpenAI string args
        ("[get_weather(city='Paris', days=3)]", 1.0),  # ToolACE bracket syntax
        ('{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}', 1.0),  # Llama 3's bare JSON call
        ('{"name": "get_weather", "parameters": {"city": "Paris"', 0.0),
        (block([{"name": "get_weather", "arguments": {"city": "paris", "days": 3}}]), 0.0),  # values are exact
        (block([{"name": "get_weather", "arguments": {"city": "Paris"}}]), 0.0),  # missing argument
        (block([{"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "unit": "C"}}]), 0.0),  # extra one
        (block([{"name": "get_forecast", "arguments": {"city": "Paris", "days": 3}}]), 0.0),  # wrong name
        (block(WEATHER * 2), 0.0),  # called twice
        ("<tool_call>{not json}</tool_call>", 0.0),
        ("<tool_call>" + json.dumps(WEATHER), 0.0),  # never closed
        ("It will be sunny.", 0.0),  # no call
    ],
)
def test_single_call(response, expected):
    assert score(response) == expected


def test_parallel_calls_match_as_a_multiset():
    calls = [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {"y": [1, 2], "z": {"k": "v"}}}]
    assert score(block(calls[::-1]), calls) == 1.0
    assert score(block(calls[:1]), calls) == 0.0
    assert score(block([calls[0], calls[0]]), [calls[0], calls[1]]) == 0.0


def test_no_call_expected():
    assert score("I cannot help with that: the city is missing.", []) == 1.0
    assert score(block(WEATHER), []) == 0.0


def test_last_block_counts_and_think_rule():
    wrong = [{"name": "get_weather", "arguments": {"city": "Rome", "days": 3}}]
    assert score(block(wrong) + block(WEATHER)) == 1.0
    good = "<think>need the weather</think>\n" + block(WEATHER)
    assert score(good, require_think=True) == 1.0
    assert score(block(WEATHER), require_think=True) == 0.0
    assert score("<think>a</think><think>b</think>" + block(WEATHER), require_think=True) == 0.0
    assert score(block(WEATHER) + "<think>late</think>", require_think=True) == 0.0


def test_bracket_syntax_parser():
    got = parse_bracket_calls(
        "[Sports Live Events(sport='football', range=\"this week\"), weather.get(days=[1, 2], x=None)]"
    )
    assert got == [
        {"name": "Sports Live Events", "arguments": {"sport": "football", "range": "this week"}},
        {"name": "weather.get", "arguments": {"days": [1, 2], "x": None}},
    ]
    assert parse_bracket_calls("[f(s='a, b (c)')]") == [{"name": "f", "arguments": {"s": "a, b (c)"}}]
    for bad in ("f(a=1)", "[f(1)]", "[f(a=g())]", "[f(a='1)]"):
        with pytest.raises(CallSyntaxError):
            parse_bracket_calls(bad)
    assert parse_response_calls("[f(1)]") is None  # tried to call, malformed


def test_reference_must_be_calls():
    with pytest.raises(KeyError):
        tool_call_reward("", "x", {})
    with pytest.raises(ValueError):
        tool_call_reward("", "x", {"answer": '"get_weather"'})
