"""The OpenR1-Math and ToolACE preparation scripts, on small files in the datasets' own layouts.

OpenR1-Math-220k (Parquet): problem, solution, answer, problem_type, question_type, source, uuid,
is_reasoning_complete[], generations[], correctness_math_verify[], correctness_llama[],
finish_reasons[], correctness_count, messages[]. ToolACE (data.json, a JSON array): system (the
function list as JSON after "Here is a list of functions in JSON format that you can invoke:"),
conversations [{"from": user|assistant|tool, "value": ...}], calls in bracket syntax.
"""

import json
import subprocess
import sys

import pytest

GOOD = "<think>\nLet me add: 2 + 3 = {a}.\nSo the answer is {a}.\n</think>\n\nThe sum is {a}, so the answer is $\\boxed{{{a}}}$."


def openr1_row(
    i,
    answer,
    generations,
    *,
    problem=None,
    question_type="math-word-problem",
    finish=None,
    verified=None,
    complete=None,
):
    n = len(generations)
    problem = problem or f"Problem {i}: what is {answer}?"
    return {
        "problem": problem,
        "solution": "...",
        "answer": answer,
        "problem_type": "Algebra",
        "question_type": question_type,
        "source": "olympiads",
        "uuid": f"u{i}",
        "is_reasoning_complete": complete or [True] * n,
        "generations": generations,
        "correctness_math_verify": verified or [True] * n,
        "correctness_llama": None,
        "finish_reasons": finish or ["stop"] * n,
        "correctness_count": n,
        "messages": [
            {"role": "user", "content": problem},
            {"role": "assistant", "content": generations[0] if n else ""},
        ],
    }


def openr1_rows():
    rows = [openr1_row(i, str(10 + i), [GOOD.format(a=10 + i)]) for i in range(8)]  # clean, integer answers
    rows += [
        openr1_row(20, "\\frac{1}{2}", [GOOD.format(a="\\frac{1}{2}")]),  # not an integer
        openr1_row(21, "3.5", [GOOD.format(a=3.5)]),
        openr1_row(22, "12", [GOOD.format(a=12)], problem="Problem 0: what is 10?"),  # duplicate problem text
        openr1_row(23, "B", [GOOD.format(a="B")], question_type="MCQ"),
        # integer answers whose traces are all unusable -> RL only
        openr1_row(30, "30", [GOOD.format(a=30)], finish=["length"]),
        openr1_row(31, "31", [GOOD.format(a=31)], verified=[False]),
        openr1_row(32, "32", ["Let me think. \\boxed{32}"]),  # no </think>
        openr1_row(33, "33", ["<think>33</think>\n\nThe answer is 33."]),  # nothing boxed after the reasoning
        openr1_row(34, "34", [GOOD.format(a=34).replace("Let me add", "让我们计算")]),  # language mixing
        openr1_row(35, "35", ["<think>\n" + "I keep repeating this same line.\n" * 30 + "</think>\n\\boxed{35}"]),
        openr1_row(36, "36", [GOOD.format(a=37)]),  # marked correct, but it is not
        openr1_row(37, "1,000", [GOOD.format(a="1000")]),  # "1,000" is an integer answer
    ]
    # two traces, the shorter usable one is chosen; the opening <think> is restored when missing
    rows.append(openr1_row(40, "$40$", ["x" * 50 + GOOD.format(a=40), GOOD.format(a=40)[len("<think>") :]]))
    return rows


def write_parquet(path, rows):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), str(path))


def test_prep_openr1_recipe(tmp_path):
    from chord_megatron.data import prep_openr1

    src = tmp_path / "openr1"
    src.mkdir()
    rows = openr1_rows()
    write_parquet(src / "train-00000-of-00002.parquet", rows[:10])
    write_parquet(src / "train-00001-of-00002.parquet", rows[10:])
    out = tmp_path / "out"
    assert prep_openr1.main([str(src), str(out), "--sft", "6", "--rl", "50", "--seed", "1"]) == 0
    sft = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    rl = [json.loads(line) for line in (out / "rl.jsonl").read_text().splitlines()]
    stats = json.loads((out / "stats.json").read_text())

    # 8 clean + 1,000 + the two-trace problem have usable traces; 6 go to SFT, the rest to RL.
    assert len(sft) == 6 and len(rl) == 10 + 7 - 6
    sft_problems = {r["messages"][0]["content"] for r in sft}
    rl_problems = {r["messages"][0]["content"] for r in rl}
    assert not sft_problems & rl_problems  # disjoint
    assert len(sft_problems) + len(rl_problems) == 10 + 7  # every kept problem used once
    assert all(r["answer"].lstrip("-").isdigit() for r in sft + rl)
    for r in sft:
        user, expert = r["messages"]
        assert user["role"] == "user" and user["content"].endswith(prep_openr1.INSTRUCTION)
        assert expert["role"] == "assistant" and expert["content"].startswith("<think>")
        final = expert["content"].split("</think>", 1)[1]
        assert f"\\boxed{{{r['answer']}}}" in final  # reasoning, then the boxed (correct) answer
        assert "x" * 50 not in expert["content"]  # the shorter trace was chosen
    # problems with only unusable traces all end up in RL
    assert {"30", "31", "32", "33", "34", "35", "36"} <= {r["answer"] for r in rl}
    d = stats["dropped"]
    assert d["non_integer_answer"] == 2 and d["duplicate_problem"] == 1 and d["question_type"] == 1
    assert stats["rows"] == {"sft": 6, "rl": 11} and stats["rl_in_sft_removed"] == 0
    # With room for every problem in SFT, each dirty trace is tried once and counted by reason.
    all_in = prep_openr1.prepare([src], tmp_path / "all", n_sft=50, n_rl=50)
    assert all_in["rows"] == {"sft": 10, "rl": 7}
    trace_reasons = {k: v for k, v in all_in["dropped"].items() if k.startswith("trace_")}
    assert trace_reasons == {
        f"trace_{r}": 1
        for r in (
            "not_finished",
            "marked_incorrect",
            "no_reasoning_block",
            "no_boxed_answer",
            "language_mixing",
            "repetitive",
            "wrong_answer",
        )
    }


def test_prep_openr1_length_filter_and_jsonl_input(tmp_path):
    from chord_megatron.data import prep_openr1

    rows = [openr1_row(i, str(i + 1), [GOOD.format(a=i + 1) + (" pad" * 200 if i % 2 else "")]) for i in range(6)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = prep_openr1.prepare([src], tmp_path / "out", n_sft=10, n_rl=10, max_response_chars=400)
    assert stats["rows"] == {"sft": 3, "rl": 3} and stats["dropped"]["trace_too_long"] == 3


def test_integer_answers():
    from chord_megatron.data.prep_openr1 import integer_answer

    for text, want in [
        ("12", 12),
        ("-3", -3),
        ("1,000", 1000),
        ("$7$", 7),
        ("\\boxed{8}", 8),
        (" 9 ", 9),
        (5, 5),
        ("1{,}000", 1000),
    ]:
        assert integer_answer(text) == want, text
    for text in ("\\frac{1}{2}", "3.5", "x=2", "12,34", "", "B", True, None, "1e3"):
        assert integer_answer(text) is None, text


# ----------------------------------------------------------------------------------------------
def toolace_system(tools):
    return (
        "You are an expert in composing functions. You are given a question and a set of possible functions.\n"
        "Here is a list of functions in JSON format that you can invoke:\n" + json.dumps(tools) + ".\n"
        "Should you decide to return the function call(s), put it in the format of [func1(params_name=params_value, "
        "params_name2=params_value2...), func2(params)]\nNO other text MUST be included."
    )


WEATHER = {
    "name": "Weather Forecast",
    "description": "forecast",
    "parameters": {
        "type": "dict",
        "properties": {"city": {"type": "string"}, "days": {"type": "int"}},
        "required": ["city"],
    },
}
STOCK = {
    "name": "stock.price",
    "description": "price",
    "parameters": {"type": "dict", "properties": {"symbol": {"type": "string"}}, "required": ["symbol"]},
}


def toolace_rows(n=12):
    rows = []
    for i in range(n):
        rows.append(
            {
                "system": toolace_system([WEATHER, STOCK]),
                "conversations": [
                    {"from": "user", "value": f"Weather in city {i} for 3 days, and the price of S{i}?"},
                    {
                        "from": "assistant",
                        "value": f"[Weather Forecast(city='C{i}', days=3), stock.price(symbol='S{i}')]",
                    },
                    {"from": "tool", "value": json.dumps([{"name": "Weather Forecast", "results": {"t": 20}}])},
                    {"from": "assistant", "value": "It will be 20 degrees."},
                    {"from": "user", "value": "And the price of T?"},
                    {"from": "assistant", "value": "[stock.price(symbol='T')]"},
                ],
            }
        )
    rows.append(
        {
            "system": toolace_system([STOCK]),
            "conversations": [  # a function that is not listed
                {"from": "user", "value": "weather?"},
                {"from": "assistant", "value": "[Weather Forecast(city='X')]"},
            ],
        }
    )
    rows.append({"system": "no tools here", "conversations": [{"from": "user", "value": "hi"}]})
    rows.append(
        {
            "system": toolace_system([STOCK]),
            "conversations": [  # a call we cannot parse
                {"from": "user", "value": "price?"},
                {"from": "assistant", "value": "[stock.price('AAPL')]"},
            ],
        }
    )
    rows.append(dict(rows[0]))  # the same conversation twice: its prompts may land in both sets
    return rows


def test_prep_toolace_recipe(tmp_path):
    from chord_megatron.rewards.tool_call import tool_call_reward

    src = tmp_path / "data.json"
    src.write_text(json.dumps(toolace_rows()))
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "chord_megatron.cli",
            "data",
            "prep-toolace",
            str(src),
            str(out),
            "--rl",
            "14",
            "--sft",
            "6",
            "--eval",
            "20",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    sft = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    rl = [json.loads(line) for line in (out / "rl.jsonl").read_text().splitlines()]
    stats = json.loads((out / "stats.json").read_text())
    # 13 usable conversations x 2 call turns = 26 samples; 6 to SFT (3 conversations), the rest RL
    # minus the duplicate conversation's prompts when its twin is in SFT.
    held_out = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert len(sft) == 6
    # seed 3 puts one copy of the duplicated conversation in SFT and the other in RL: its 2 RL
    # prompts are removed (and counted)
    assert stats["rl_in_sft_removed"] == 2 and len(rl) == 14 - 2
    assert len(held_out) == 6 and stats["eval_in_sft_removed"] == 0  # what is left after SFT and RL
    rl = rl + held_out
    assert stats["dropped"] == {"unknown_function": 1, "no_tools": 1, "unparsable_call": 1}
    sft_prompts = {json.dumps(r["messages"][:-1], sort_keys=True) for r in sft}
    assert not sft_prompts & {json.dumps(r["messages"], sort_keys=True) for r in rl}
    for r in rl:
        system = r["messages"][0]
        assert (
            system["role"] == "system"
            and "<tool_call>" in system["content"]
            and "Weather Forecast" in system["content"]
        )
        assert r["messages"][-1]["role"] == "user"
        calls = json.loads(r["answer"])
        assert calls and all(set(c) == {"name", "arguments"} for c in calls)
        # the expert format scores 1 against the reference, a wrong argument 0
        assert tool_call_reward("", "<tool_call>" + r["answer"] + "</tool_call>", r) == 1.0
        wrong = [dict(c, arguments={**c["arguments"], "x": 1}) for c in calls]
        assert tool_call_reward("", "<tool_call>" + json.dumps(wrong) + "</tool_call>", r) == 0.0
    second_turn = [r for r in rl if len(r["messages"]) > 2]
    assert second_turn and all(
        m["content"].startswith("<tool_call>[")
        for r in second_turn
        for m in r["messages"]
        if m["role"] == "assistant" and "[" in m["content"][:12]
    )
    assert {m["role"] for r in second_turn for m in r["messages"]} == {"system", "user", "assistant", "tool"}
    for r in sft:
        expert = r["messages"][-1]
        assert expert["role"] == "assistant" and expert["content"].startswith("<tool_call>[")
