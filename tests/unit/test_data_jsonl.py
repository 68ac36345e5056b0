"""JSONL loading: every kind of bad row names file and line, or is skipped and counted."""

import json

import pytest

from chord_megatron.data import CharTokenizer, DataError, load_expert, load_prompts, write_jsonl

TOK = CharTokenizer()


def write_lines(tmp_path, lines, name="data.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


GOOD_PROMPT = json.dumps({"prompt": "12+30=", "answer": "42", "id": 7})
GOOD_EXPERT = json.dumps({"prompt": "12+30=", "response": "2+0+0=02,1+3+0=04|42"})


def test_good_rows_load_with_metadata(tmp_path):
    p = write_lines(tmp_path, [GOOD_PROMPT, "", json.dumps({"prompt": "1+2=", "answer": 3})])
    rows, skipped = load_prompts(p, TOK, max_prompt_tokens=16)
    assert [r.answer for r in rows] == ["42", "3"] and not skipped
    assert rows[0].prompt_ids == TOK.encode_prompt("12+30=") and rows[0].metadata == {"answer": "42", "id": 7}
    assert rows[1].source == f"{p}:3"


def test_expert_rows_end_with_eos_and_accept_chat_form(tmp_path):
    chat = {"messages": [{"role": "user", "content": "1+2="}, {"role": "assistant", "content": "3"}]}
    p = write_lines(tmp_path, [GOOD_EXPERT, json.dumps(chat)])
    rows, _ = load_expert(p, TOK, max_prompt_tokens=16, max_response_tokens=32)
    assert rows[0].response_ids[-1] == TOK.eos_id
    assert TOK.decode(rows[0].response_ids) == "2+0+0=02,1+3+0=04|42"
    assert (TOK.decode(rows[1].prompt_ids), TOK.decode(rows[1].response_ids)) == ("1+2=", "3")


@pytest.mark.parametrize(
    "bad,fragment,reason",
    [
        ('{"prompt": "1+2=", "answer": ', "not valid JSON", "bad_json"),
        ("[1, 2]", "expected a JSON object, got list", "bad_json"),
        ('{"answer": "3"}', "missing field 'prompt'", "missing_field"),
        ('{"prompt": "1+2="}', "missing field 'answer'", "missing_field"),
        ('{"prompt": "1+2=", "answer": "  "}', "field 'answer' is empty", "empty_field"),
        ('{"prompt": "1+2=", "answer": null}', "field 'answer' must be a string", "bad_field"),
        ('{"prompt": "' + "1" * 40 + '", "answer": "1"}', "more than data.max_prompt_tokens=16", "too_long"),
        ('{"prompt": "x+y=", "answer": "1"}', "is not in the alphabet", "bad_field"),
    ],
)
def test_bad_prompt_rows(tmp_path, bad, fragment, reason):
    p = write_lines(tmp_path, [GOOD_PROMPT, bad, GOOD_PROMPT])
    with pytest.raises(DataError) as info:
        load_prompts(p, TOK, max_prompt_tokens=16)
    assert str(info.value).startswith(f"{p}:2: ") and fragment in str(info.value)
    rows, skipped = load_prompts(p, TOK, max_prompt_tokens=16, on_bad_row="skip")
    assert len(rows) == 2 and skipped == {reason: 1}


@pytest.mark.parametrize(
    "bad,fragment",
    [
        (
            '{"prompt": "1+2=", "response": "' + "3" * 40 + '"}',
            "expert response has 41 tokens, more than data.max_response_tokens=32",
        ),
        ('{"prompt": "1+2=", "response": ""}', "field 'response' is empty"),
        ('{"messages": [{"role": "user", "content": "1+2="}]}', "the last message must be the assistant's"),
        ('{"messages": "1+2=3"}', "must be a non-empty list"),
    ],
)
def test_bad_expert_rows(tmp_path, bad, fragment):
    p = write_lines(tmp_path, [bad, GOOD_EXPERT])
    with pytest.raises(DataError) as info:
        load_expert(p, TOK, max_prompt_tokens=16, max_response_tokens=32)
    assert str(info.value).startswith(f"{p}:1: ") and fragment in str(info.value)
    rows, skipped = load_expert(p, TOK, max_prompt_tokens=16, max_response_tokens=32, on_bad_row="skip")
    assert len(rows) == 1 and sum(skipped.values()) == 1


def test_no_usable_rows_and_missing_file(tmp_path):
    p = write_lines(tmp_path, ['{"prompt": "1+2="}'])
    with pytest.raises(DataError, match="no usable rows"):
        load_prompts(p, TOK, max_prompt_tokens=16, on_bad_row="skip")
    with pytest.raises(DataError, match="no such data file"):
        load_prompts(tmp_path / "missing.jsonl", TOK, max_prompt_tokens=16)


def test_write_jsonl_round_trip(tmp_path):
    p = tmp_path / "sub" / "out.jsonl"
    assert write_jsonl(p, [{"prompt": "1+1=", "answer": "2"}]) == 1
    rows, _ = load_prompts(p, TOK, max_prompt_tokens=8)
    assert rows[0].answer == "2" and not (tmp_path / "sub" / "out.jsonl.tmp").exists()
