"""Tool-use reward, registered as "tool_call": exact match of the parsed call(s).

The reference, metadata["answer"], is a JSON list of calls [{"name": ..., "arguments": {...}}]
(a JSON string or the list itself; [] = the model should call nothing), as
chord_megatron.data.prep_toolace writes it. The response's calls are read from its last
<tool_call>...</tool_call> block (JSON: one call object or a list of them, Hermes / Tool-N1
style), or, when there is no such block, from a response that is just one JSON call object
(Llama 3's own format, "parameters" accepted for "arguments") or ToolACE's bracket syntax
`[get_weather(city='Paris', days=3)]`.

1.0 when the multiset of calls equals the reference's: the same names, each with exactly the
same arguments (argument order does not matter, nor does the order of parallel calls; numbers
compare by value, 3 == 3.0), else 0.0. A response without any call scores 1.0 only when the
reference is []. With metadata["require_think"] true, the response must also have exactly one
<think>...</think> before its call (Tool-N1's format rule against reward hacking).
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from typing import Any, Dict, List, Optional

from .registry import register_reward

_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


class CallSyntaxError(ValueError):
    pass


def _split_top_level(text: str, sep: str = ",") -> List[str]:
    """Split on `sep` outside brackets and quotes."""
    parts, depth, quote, cur, escaped = [], 0, None, [], False
    for ch in text:
        if quote:
            cur.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if quote or depth:
        raise CallSyntaxError("unbalanced brackets or quotes")
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def parse_bracket_calls(text: str) -> List[Dict[str, Any]]:
    """ToolACE's `[f(a=1, b='x'), g()]` -> [{"name": "f", "arguments": {"a": 1, "b": "x"}}, ...].
    Names may hold spaces and dots ("Sports Live Events", "weather.get"); arguments must be
    keyword arguments with Python literal values."""
    s = text.strip()
    if not (s.startswith("[") and s.endswith("]")):
        raise CallSyntaxError("not a [call(...), ...] list")
    calls = []
    for piece in _split_top_level(s[1:-1]):
        open_ = piece.find("(")
        if open_ <= 0 or not piece.endswith(")"):
            raise CallSyntaxError(f"not a call: {piece[:40]!r}")
        name = piece[:open_].strip()
        try:
            node = ast.parse(f"f({piece[open_ + 1 : -1]})", mode="eval").body
        except SyntaxError as e:
            raise CallSyntaxError(f"arguments of {name!r}: {e.msg}") from None
        if node.args:
            raise CallSyntaxError(f"{name!r} has positional arguments")
        try:
            args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
        except ValueError:
            raise CallSyntaxError(f"{name!r} has a non-literal argument") from None
        calls.append({"name": name, "arguments": args})
    return calls


def _as_calls(obj: Any) -> Optional[List[Dict[str, Any]]]:
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list):
        return None
    calls = []
    for c in obj:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            return None
        args = c.get("arguments", c.get("parameters", {}))
        if isinstance(args, str):  # OpenAI style: arguments as a JSON string
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        if not isinstance(args, dict):
            return None
        calls.append({"name": c["name"], "arguments": args})
    return calls


def parse_response_calls(response: str) -> Optional[List[Dict[str, Any]]]:
    """The calls a response makes; [] when it makes none; None when it tries and is malformed."""
    blocks = _BLOCK.findall(response)
    if blocks:
        try:
            return _as_calls(json.loads(blocks[-1].strip()))
        except json.JSONDecodeError:
            return None
    if "<tool_call>" in response:
        return None  # an unclosed block
    stripped = response.strip()
    if stripped.startswith("{") and stripped.endswith("}"):  # a bare JSON call (Llama 3's own format)
        try:
            return _as_calls(json.loads(stripped))
        except json.JSONDecodeError:
            return None
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            return parse_bracket_calls(stripped)
        except CallSyntaxError:
            try:
                return _as_calls(json.loads(stripped))
            except json.JSONDecodeError:
                return None
    return []


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return str(value)


def _key(call: Dict[str, Any]) -> str:
    return json.dumps([call["name"], _canonical(call["arguments"])], sort_keys=True)


def calls_match(got: List[Dict[str, Any]], want: List[Dict[str, Any]]) -> bool:
    return Counter(map(_key, got)) == Counter(map(_key, want))


def _think_ok(response: str) -> bool:
    if response.count("<think>") != 1 or response.count("</think>") != 1:
        return False
    end, call = response.find("</think>"), response.find("<tool_call>")
    return response.find("<think>") < end and (call == -1 or end < call)


@register_reward("tool_call")
def tool_call_reward(prompt: str, response: str, metadata: Dict[str, Any]) -> float:
    if "answer" not in metadata:
        raise KeyError("the tool_call reward needs metadata['answer'] (a JSON list of calls)")
    want = metadata["answer"]
    want = _as_calls(json.loads(want) if isinstance(want, str) else want)
    if want is None:
        raise ValueError(f"tool_call reward: the reference {metadata['answer']!r} is not a list of calls")
    if metadata.get("require_think") and not _think_ok(response):
        return 0.0
    got = parse_response_calls(response)
    return float(got is not None and calls_match(got, want))
