"""Prompt and expert data from JSONL files, validated row by row.

Accepted rows (one JSON object per line; blank lines are ignored):
  prompts / eval:  {"prompt": str, "answer": str|number, ...extra fields kept as metadata}
                   or {"messages": [{"role": "user", "content": ...}, ...], "answer": ...}
  expert:          {"prompt": str, "response": str}
                   or {"messages": [..., {"role": "assistant", "content": <the expert response>}]}

Parquet files (*.parquet, read with pyarrow) hold the same records, one per table row; their
"line" in messages is the 1-based row number.

A bad row (not JSON, not an object, a missing or empty field, too many tokens) stops loading
with a DataError naming the file and line, or, with on_bad_row="skip", is dropped and counted
by reason so that the run can report what it left out.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..errors import ChordError


class DataError(ChordError, ValueError):
    """A data problem; str(error) is 'file:line: what is wrong'."""

    exit_code, kind = 2, "data error"


@dataclass
class PromptRow:
    prompt: str
    prompt_ids: List[int]
    answer: str
    metadata: Dict[str, Any] = field(default_factory=dict)
    source: str = ""
    raw_prompt: str = ""  # the row's own prompt text (no chat template): what overlap checks compare


@dataclass
class ExpertRow:
    prompt_ids: List[int]
    response_ids: List[int]  # ends with the tokenizer's eos
    source: str = ""
    raw_prompt: str = ""  # the row's own prompt text (no chat template): what overlap checks compare


class _Skip(Exception):
    def __init__(self, reason: str, message: str):
        self.reason, self.message = reason, message


def _records(path: Path) -> Iterable[Tuple[int, Any, Optional[str]]]:
    """(line number, parsed object or None, JSON error or None) for every non-blank line."""
    if path.suffix == ".parquet":
        yield from _parquet_records(path)
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line), None
            except json.JSONDecodeError as e:
                yield n, None, f"not valid JSON ({e.msg} at column {e.colno})"


def _parquet_records(path: Path) -> Iterable[Tuple[int, Any, Optional[str]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'chord-megatron[data]')") from None
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            # A column absent from a row is null in Parquet: treat it as absent, as in JSONL.
            yield n, {k: v for k, v in row.items() if v is not None}, None


def _text(obj: Dict[str, Any], key: str) -> str:
    if key not in obj:
        raise _Skip("missing_field", f"missing field {key!r}")
    value = obj[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise _Skip("bad_field", f"field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _Skip("empty_field", f"field {key!r} is empty")
    return value


def _prompt_text(obj: Dict[str, Any], tokenizer: Any, *, drop_last_assistant: bool) -> Tuple[str, Optional[str]]:
    """The prompt text and, for chat rows whose last turn is the assistant's, that turn."""
    if "messages" not in obj:
        return _text(obj, "prompt"), None
    messages = obj["messages"]
    if (
        not isinstance(messages, list)
        or not messages
        or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        raise _Skip("bad_field", "field 'messages' must be a non-empty list of {role, content} objects")
    reply = None
    if drop_last_assistant:
        if messages[-1]["role"] != "assistant":
            raise _Skip("missing_field", "the last message must be the assistant's (the expert response)")
        reply = messages[-1]["content"]
        messages = messages[:-1]
        if not reply.strip():
            raise _Skip("empty_field", "the expert (last assistant) message is empty")
    if hasattr(tokenizer, "apply_chat_template"):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "".join(m["content"] for m in messages)
    return text, reply


def raw_prompt(obj: Dict[str, Any], *, drop_last_assistant: bool = False) -> str:
    """The prompt as the row spells it: the "prompt" field, or "role: content" lines of its
    messages (without the expert's final assistant turn)."""
    if "messages" not in obj:
        return str(obj.get("prompt", ""))
    messages = obj["messages"][:-1] if drop_last_assistant else obj["messages"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _load(path: str | Path, on_bad_row: str, parse) -> Tuple[list, Counter]:
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    rows, skipped = [], Counter()
    for n, obj, json_error in _records(path):
        where = f"{path}:{n}"
        try:
            if json_error:
                raise _Skip("bad_json", json_error)
            if not isinstance(obj, dict):
                raise _Skip("bad_json", f"expected a JSON object, got {type(obj).__name__}")
            rows.append(parse(obj, where))
        except _Skip as s:
            if on_bad_row == "error":
                raise DataError(f"{where}: {s.message}") from None
            skipped[s.reason] += 1
    if not rows:
        raise DataError(f"{path}: no usable rows" + (f" (skipped: {dict(skipped)})" if skipped else ""))
    return rows, skipped


def load_prompts(
    path: str | Path, tokenizer: Any, *, max_prompt_tokens: int, on_bad_row: str = "error"
) -> Tuple[List[PromptRow], Counter]:
    """RL or evaluation prompts with their reference answers."""

    def parse(obj: Dict[str, Any], where: str) -> PromptRow:
        prompt, _ = _prompt_text(obj, tokenizer, drop_last_assistant=False)
        answer = _text(obj, "answer")
        ids = _encode(tokenizer, prompt, prompt=True)
        if len(ids) > max_prompt_tokens:
            raise _Skip(
                "too_long", f"prompt has {len(ids)} tokens, more than data.max_prompt_tokens={max_prompt_tokens}"
            )
        meta = {k: v for k, v in obj.items() if k not in ("prompt", "messages")}
        return PromptRow(prompt, ids, answer, meta, where, raw_prompt(obj))

    return _load(path, on_bad_row, parse)


def load_expert(
    path: str | Path,
    tokenizer: Any,
    *,
    max_prompt_tokens: int,
    max_response_tokens: int,
    on_bad_row: str = "error",
) -> Tuple[List[ExpertRow], Counter]:
    """Expert (prompt, response) pairs; the response gets the tokenizer's eos appended."""

    def parse(obj: Dict[str, Any], where: str) -> ExpertRow:
        prompt, reply = _prompt_text(obj, tokenizer, drop_last_assistant="messages" in obj)
        response = reply if reply is not None else _text(obj, "response")
        p_ids = _encode(tokenizer, prompt, prompt=True)
        r_ids = _encode(tokenizer, response) + [tokenizer.eos_id]
        if len(p_ids) > max_prompt_tokens:
            raise _Skip(
                "too_long", f"prompt has {len(p_ids)} tokens, more than data.max_prompt_tokens={max_prompt_tokens}"
            )
        if len(r_ids) > max_response_tokens:
            raise _Skip(
                "too_long",
                f"expert response has {len(r_ids)} tokens, more than data.max_response_tokens={max_response_tokens}",
            )
        return ExpertRow(p_ids, r_ids, where, raw_prompt(obj, drop_last_assistant=True))

    return _load(path, on_bad_row, parse)


def _encode(tokenizer: Any, text: str, prompt: bool = False) -> List[int]:
    """Token ids; prompts go through `encode_prompt` when the tokenizer has one (it adds <bos>)."""
    encode = tokenizer.encode_prompt if prompt and hasattr(tokenizer, "encode_prompt") else tokenizer.encode
    try:
        return list(encode(text))
    except ValueError as e:  # e.g. a character outside a toy tokenizer's alphabet
        raise _Skip("bad_field", str(e)) from None


def write_jsonl(path: str | Path, records: Iterable[Dict[str, Any]]) -> int:
    """Write records one per line (atomically: a temp file renamed into place); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
            n += 1
    tmp.replace(path)
    return n
