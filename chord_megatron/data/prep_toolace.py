"""Prepare the paper's tool-use data from a local copy of ToolACE.

    chord data prep-toolace IN [IN ...] OUT [--rl 5000] [--sft 500] [--eval 0]
        [--seed 0] [--include-no-call]

IN: ToolACE's data.json (a JSON array) or JSONL / Parquet copies, or folders of them. Columns
used (Team-ACE/ToolACE's layout): "system" -- a prompt that lists the available functions as
a JSON array after "Here is a list of functions in JSON format that you can invoke:" -- and
"conversations", a list of {"from": "user" | "assistant" | "tool", "value": str} turns, where an
assistant turn that calls tools is in bracket syntax: [func(a=1, b='x'), other(c=[1, 2])].

Every assistant turn that is a valid call of listed functions becomes one sample (as in
Tool-N1's preparation, which the CHORD authors followed): the prompt is our system message
(the functions and the output format: <tool_call>[{"name": ..., "arguments": {...}}]</tool_call>)
plus the conversation before that turn, earlier calls rewritten in that format; the reference
is the call list. With --include-no-call, plain-text assistant turns become samples whose
reference is [] (no call). Samples of one conversation stay together: conversations are
shuffled (--seed) and the first fill the SFT set (--sft samples, expert response = the call
block), the next the RL set (--rl samples, with "answer" for the "tool_call" reward), then a
held-out set (--eval samples, same form as RL) for `chord eval`; an RL or held-out prompt that
also occurs in the SFT set is removed and counted.

OUT gets rl.jsonl, sft.jsonl, eval.jsonl (with --eval) and stats.json.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..rewards.tool_call import CallSyntaxError, parse_bracket_calls
from .overlap import drop_overlap
from .prep_common import read_rows, summary, write_outputs

TOOLS_MARKER = "Here is a list of functions in JSON format that you can invoke:"
SYSTEM = (
    "You are an expert in composing functions. You are given a question and a set of possible functions. "
    "Based on the question, make one or more function calls to achieve the purpose. If none of the functions "
    "can be used, or the question lacks parameters a function requires, say so instead of calling.\n"
    "Here is a list of functions in JSON format that you can invoke:\n{tools}\n\n"
    "To call functions, answer with the calls as a JSON list inside one tool-call block:\n"
    '<tool_call>[{{"name": <function name>, "arguments": <arguments as a JSON object>}}, ...]</tool_call>'
)
ROLES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}


def extract_tools(system: str) -> Optional[List[Dict[str, Any]]]:
    """The function list ToolACE embeds in its system prompt, or None."""
    at = system.find(TOOLS_MARKER)
    if at < 0:
        return None
    start = system.find("[", at + len(TOOLS_MARKER))
    if start < 0:
        return None
    try:
        tools, _ = json.JSONDecoder().raw_decode(system[start:])
    except json.JSONDecodeError:
        return None
    if not isinstance(tools, list) or not tools or not all(isinstance(t, dict) and "name" in t for t in tools):
        return None
    return tools


def call_block(calls: List[Dict[str, Any]]) -> str:
    return "<tool_call>" + json.dumps(calls, ensure_ascii=False) + "</tool_call>"


def samples_of(row: Dict[str, Any], *, include_no_call: bool, dropped: Counter) -> List[Dict[str, Any]]:
    """(messages, calls) samples of one ToolACE conversation."""
    tools = extract_tools(str(row.get("system", "")))
    turns = row.get("conversations")
    if tools is None:
        dropped["no_tools"] += 1
        return []
    if not isinstance(turns, list) or not turns:
        dropped["no_conversation"] += 1
        return []
    names = {t["name"] for t in tools}
    history = [{"role": "system", "content": SYSTEM.format(tools=json.dumps(tools, ensure_ascii=False))}]
    out = []
    for turn in turns:
        role = ROLES.get(str(turn.get("from", "")).lower()) if isinstance(turn, dict) else None
        value = turn.get("value") if isinstance(turn, dict) else None
        if role is None or not isinstance(value, str):
            dropped["bad_turn"] += 1
            return out
        content = value.strip()
        if role == "assistant" and content.startswith("[") and content.endswith("]"):
            try:
                calls = parse_bracket_calls(content)
            except CallSyntaxError:
                calls = None
            if calls is None:
                dropped["unparsable_call"] += 1
                return out  # later turns would follow a call we cannot render
            if all(c["name"] in names for c in calls):
                out.append({"messages": list(history), "calls": calls})
            else:
                dropped["unknown_function"] += 1
            content = call_block(calls)
        elif role == "assistant" and include_no_call and len(history) > 1:
            out.append({"messages": list(history), "calls": []})
        history.append({"role": role, "content": content})
    return out


def prepare(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    n_rl: int = 5000,
    n_sft: int = 500,
    n_eval: int = 0,
    seed: int = 0,
    include_no_call: bool = False,
) -> Dict[str, Any]:
    dropped: Counter = Counter()
    conversations = []
    total = 0
    for row in read_rows(paths):
        total += 1
        samples = samples_of(row, include_no_call=include_no_call, dropped=dropped)
        if samples:
            conversations.append(samples)
    random.Random(seed).shuffle(conversations)
    sft, rl, held_out = [], [], []
    for samples in conversations:
        if len(sft) < n_sft:
            sft.extend(samples[: n_sft - len(sft)])
        elif len(rl) < n_rl:
            rl.extend(samples[: n_rl - len(rl)])
        elif len(held_out) < n_eval:
            held_out.extend(samples[: n_eval - len(held_out)])
        else:
            break

    def text(messages):
        return json.dumps(messages, ensure_ascii=False, sort_keys=True)

    sft_texts = [text(s["messages"]) for s in sft]
    rl, overlap = drop_overlap(rl, sft_texts, key=lambda s: text(s["messages"]))
    held_out, eval_overlap = drop_overlap(held_out, sft_texts, key=lambda s: text(s["messages"]))

    def prompt_rows(samples):
        return [{"messages": s["messages"], "answer": json.dumps(s["calls"], ensure_ascii=False)} for s in samples]

    splits = {
        "sft": [{"messages": s["messages"] + [{"role": "assistant", "content": call_block(s["calls"])}]} for s in sft],
        "rl": prompt_rows(rl),
    }
    if n_eval:
        splits["eval"] = prompt_rows(held_out)
    stats = {
        "input_rows": total,
        "conversations_kept": len(conversations),
        "dropped": dropped,
        "rl_in_sft_removed": overlap,
        "eval_in_sft_removed": eval_overlap,
        "recipe": {"rl": n_rl, "sft": n_sft, "eval": n_eval, "seed": seed, "include_no_call": include_no_call},
    }
    counts = write_outputs(out, splits, stats)
    wanted = {"sft": n_sft, "rl": n_rl, **({"eval": n_eval} if n_eval else {})}
    print(summary("prep_toolace", counts, wanted, dropped + Counter(rl_in_sft=overlap), Path(out)))
    return {"rows": counts, **stats}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="chord data prep-toolace", description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", metavar="IN ... OUT", help="input files or folders, then the output folder")
    ap.add_argument("--rl", type=int, default=5000, help="RL samples (default 5000)")
    ap.add_argument("--sft", type=int, default=500, help="expert (SFT) samples (default 500)")
    ap.add_argument("--eval", type=int, default=0, help="held-out samples for chord eval (default 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--include-no-call", action="store_true", help="also plain-text assistant turns (reference [])")
    args = ap.parse_args(argv)
    if len(args.paths) < 2:
        ap.error("give at least one input and the output folder")
    prepare(
        args.paths[:-1],
        args.paths[-1],
        n_rl=args.rl,
        n_sft=args.sft,
        n_eval=args.eval,
        seed=args.seed,
        include_no_call=args.include_no_call,
    )
    return 0
