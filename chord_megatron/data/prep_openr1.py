"""Prepare the paper's math data from local OpenR1-Math-220k files.

    chord data prep-openr1 IN [IN ...] OUT [--sft 5000] [--rl 20000]
        [--seed 0] [--tokenizer DIR --max-response-tokens 16384] [--max-response-chars N]

IN: the dataset's files (Parquet as published, or JSONL / JSON), or folders of them. Columns
used (OpenR1-Math-220k's layout): problem, answer, generations (list of DeepSeek-R1 traces) and,
per generation when present, correctness_math_verify, is_reasoning_complete, finish_reasons;
question_type and uuid / source are used when present.

The recipe (CHORD, section 4: Qwen2.5-7B-Instruct, expert = R1 traces, 5k SFT / 20k RL, disjoint,
integer answers):
  1. keep problems whose reference answer is an integer ("1,000", "$12$", "\\boxed{7}" count;
     "\\frac12", "3.5", "x=2" do not) and that are not multiple-choice or proofs;
  2. drop repeated problems (normalised text, the first one stays);
  3. an expert trace is a generation that is complete (finish reason "stop", reasoning complete,
     verified correct where the columns say so), has its reasoning closed by exactly one
     </think>, boxes the correct answer after it (checked again with math-verify), and is clean:
     no U+FFFD, no Chinese/Japanese/Korean text the problem does not have, no line repeated
     over and over, and not longer than the limits (tokens with --tokenizer, else characters).
     The shortest such trace of a problem is its expert response (reasoning + boxed answer);
  4. the problems are shuffled (--seed); the first --sft that have an expert trace form the SFT
     set, the next --rl of the others (trace or not) the RL set: disjoint by construction.

OUT gets sft.jsonl ({"messages": [user, assistant]}), rl.jsonl ({"messages": [user], "answer"})
-- the shapes chord's data loader reads, chat template applied at load time -- and stats.json
with what was dropped and why.
"""

from __future__ import annotations

import argparse
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .overlap import drop_overlap, normalise_prompt
from .prep_common import read_rows, summary, write_outputs

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_INT = re.compile(r"^[+-]?\d{1,3}(,\d{3})+$|^[+-]?\d+$")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
SKIP_QUESTION_TYPES = {"mcq", "multiple-choice", "proof"}


def integer_answer(answer: Any) -> Optional[int]:
    """The reference answer as an int, or None when it is not an integer."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int):
        return answer
    if not isinstance(answer, str):
        return None
    text = answer.strip().strip("$").strip()
    m = re.fullmatch(r"\\boxed\{(.*)\}", text)
    if m:
        text = m.group(1).strip()
    text = text.replace("\\,", "").replace("{,}", ",").replace(" ", "")
    if not _INT.match(text):
        return None
    return int(text.replace(",", ""))


def repetitive(text: str, *, min_len: int = 20, max_repeats: int = 10) -> bool:
    """A line of at least min_len characters that occurs more than max_repeats times."""
    lines = Counter(line.strip() for line in text.splitlines() if len(line.strip()) >= min_len)
    return bool(lines) and max(lines.values()) > max_repeats


def _at(row: Dict[str, Any], column: str, i: int, default=None):
    values = row.get(column)
    if not isinstance(values, (list, tuple)) or i >= len(values):
        return default
    return values[i]


class TraceFilter:
    def __init__(self, *, tokenizer=None, max_tokens: Optional[int] = None, max_chars: Optional[int] = None):
        self.tokenizer, self.max_tokens, self.max_chars = tokenizer, max_tokens, max_chars

    def why_not(self, row: Dict[str, Any], i: int, answer: int) -> Optional[str]:
        """None when generation i of `row` is a usable expert trace, else the reason."""
        from ..rewards.math_answer import is_correct, last_boxed

        text = _at(row, "generations", i)
        if not isinstance(text, str) or not text.strip():
            return "empty"
        if _at(row, "finish_reasons", i, "stop") not in ("stop", None):
            return "not_finished"
        if _at(row, "is_reasoning_complete", i, True) is False:
            return "reasoning_incomplete"
        if _at(row, "correctness_math_verify", i, True) is False:
            return "marked_incorrect"
        if text.count("</think>") != 1 or text.count("<think>") > 1:
            return "no_reasoning_block"
        final = text.split("</think>", 1)[1]
        if not final.strip() or last_boxed(final) is None:
            return "no_boxed_answer"
        if "\ufffd" in text:
            return "dirty"
        if _CJK.search(text) and not _CJK.search(str(row.get("problem", ""))):
            return "language_mixing"
        if repetitive(text):
            return "repetitive"
        if self.max_chars is not None and len(text) > self.max_chars:
            return "too_long"
        if self.tokenizer is not None and self.max_tokens is not None:
            if len(self.tokenizer.encode(text, add_special_tokens=False)) > self.max_tokens:
                return "too_long"
        if not is_correct(final, str(answer)):
            return "wrong_answer"
        return None


def expert_trace(row: Dict[str, Any], answer: int, filt: TraceFilter, dropped: Counter) -> Optional[str]:
    """The shortest usable generation of `row` (with its opening <think> restored), or None."""
    usable = []
    for i in range(len(row.get("generations") or [])):
        reason = filt.why_not(row, i, answer)
        if reason is None:
            usable.append(row["generations"][i])
        else:
            dropped[f"trace_{reason}"] += 1
    if not usable:
        return None
    text = min(usable, key=len).strip()
    return text if text.startswith("<think>") else "<think>\n" + text


def prompt_text(problem: str, instruction: str) -> str:
    return f"{problem.strip()}\n{instruction}" if instruction else problem.strip()


def prepare(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    n_sft: int = 5000,
    n_rl: int = 20000,
    seed: int = 0,
    instruction: str = INSTRUCTION,
    system: Optional[str] = None,
    tokenizer: Optional[str] = None,
    max_response_tokens: Optional[int] = None,
    max_response_chars: Optional[int] = None,
) -> Dict[str, Any]:
    """Run the recipe (module docstring); returns the stats also written to OUT/stats.json."""
    tok = None
    if tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    filt = TraceFilter(tokenizer=tok, max_tokens=max_response_tokens, max_chars=max_response_chars)
    dropped: Counter = Counter()
    problems: List[Dict[str, Any]] = []
    seen = set()
    total = 0
    for row in read_rows(paths):
        total += 1
        problem = row.get("problem")
        if not isinstance(problem, str) or not problem.strip():
            dropped["no_problem"] += 1
            continue
        if str(row.get("question_type", "")).strip().lower() in SKIP_QUESTION_TYPES:
            dropped["question_type"] += 1
            continue
        answer = integer_answer(row.get("answer"))
        if answer is None:
            dropped["non_integer_answer"] += 1
            continue
        key = normalise_prompt(problem)
        if key in seen:
            dropped["duplicate_problem"] += 1
            continue
        seen.add(key)
        problems.append({"row": row, "answer": answer})
    random.Random(seed).shuffle(problems)

    def messages(problem: str) -> List[Dict[str, str]]:
        head = [{"role": "system", "content": system}] if system else []
        return head + [{"role": "user", "content": prompt_text(problem, instruction)}]

    def ids(row: Dict[str, Any]) -> Dict[str, Any]:
        return {k: row[k] for k in ("uuid", "source") if k in row}

    sft, rl = [], []
    for p in problems:
        row = p["row"]
        trace = expert_trace(row, p["answer"], filt, dropped) if len(sft) < n_sft else None
        if trace is not None:
            sft.append(
                {
                    "messages": messages(row["problem"]) + [{"role": "assistant", "content": trace}],
                    "answer": str(p["answer"]),
                    **ids(row),
                }
            )
        elif len(rl) < n_rl:
            rl.append({"messages": messages(row["problem"]), "answer": str(p["answer"]), **ids(row)})
        elif len(sft) >= n_sft:
            break
    # Disjoint by construction (each problem lands in one set, duplicates were dropped); checked.
    rl, overlap = drop_overlap(
        rl, [r["messages"][-2]["content"] for r in sft], key=lambda r: r["messages"][-1]["content"]
    )
    stats = {
        "input_rows": total,
        "problems_kept": len(problems),
        "dropped": dropped,
        "rl_in_sft_removed": overlap,
        "recipe": {
            "sft": n_sft,
            "rl": n_rl,
            "seed": seed,
            "instruction": instruction,
            "max_response_tokens": max_response_tokens,
            "max_response_chars": max_response_chars,
        },
    }
    counts = write_outputs(out, {"sft": sft, "rl": rl}, stats)
    print(summary("prep_openr1", counts, {"sft": n_sft, "rl": n_rl}, dropped, Path(out)))
    return {"rows": counts, **stats}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="chord data prep-openr1", description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", metavar="IN ... OUT", help="input files or folders, then the output folder")
    ap.add_argument("--sft", type=int, default=5000, help="expert (SFT) problems (default 5000)")
    ap.add_argument("--rl", type=int, default=20000, help="RL problems (default 20000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--instruction", default=INSTRUCTION, help="appended to every problem ('' for none)")
    ap.add_argument("--system", help="a system message for every prompt")
    ap.add_argument("--tokenizer", help="a local HF tokenizer folder, to filter traces by token count")
    ap.add_argument("--max-response-tokens", type=int, default=16384, help="with --tokenizer (default 16384)")
    ap.add_argument("--max-response-chars", type=int, help="character limit of a trace (no tokenizer needed)")
    args = ap.parse_args(argv)
    if len(args.paths) < 2:
        ap.error("give at least one input and the output folder")
    prepare(
        args.paths[:-1],
        args.paths[-1],
        n_sft=args.sft,
        n_rl=args.rl,
        seed=args.seed,
        instruction=args.instruction,
        system=args.system,
        tokenizer=args.tokenizer,
        max_response_tokens=args.max_response_tokens if args.tokenizer else None,
        max_response_chars=args.max_response_chars,
    )
    return 0
