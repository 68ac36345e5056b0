"""A tiny demo run, read outside `chord train`:

* `chord eval` of the same weights reports the run's own evaluations exactly -- the base model
  (step 0) and the checkpoint after 1 update (step 1): same prompts, stop ids, seed, samples;
* `chord export-hf` of the checkpoint stands alone: in a fresh process with transformers only,
  AutoTokenizer + AutoModelForCausalLM.generate (greedy) stops at <eos> and answers every
  held-out prompt with the tokens the in-process engine's greedy answer has (`chord eval
  --checkpoint` at top_p -> 0, which keeps only the most likely token).
"""

import json
import subprocess
import sys

import pytest

from chord_megatron.data import CharTokenizer
from chord_megatron.metrics.logger import read_metrics
from tests.support.chord_cli import DEMO, chord

pytestmark = pytest.mark.slow

# One-digit additions: a 60-step base stage already answers some right (accuracy well above 0),
# and one CHORD step (mu 0.9, mostly the expert's scratchpad) changes the answers.
TINY = [
    "base.steps=60",
    "base.eval_every=0",  # 60 steps, no plateau rule (its validation problems would not fit 1-digit sums)
    "base.problems=4000",
    "data.arith_digits=1",
    "data.arith_rl_prompts=16",
    "data.arith_expert_rows=8",
    "data.arith_eval_prompts=12",
    "train.eval_samples=4",
    "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "train.micro_batch_size=8",
    "rollout.max_new_tokens=32",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-run")
    args = [*TINY, f"base.cache_dir={root / 'base-cache'}", f"train.output_dir={root / 'run'}"]
    chord("train", DEMO, *args, "train.steps=1", "train.eval_every=1", "--no-progress")
    evals = {r["step"]: r for r in read_metrics(root / "run" / "metrics.jsonl") if "eval/accuracy" in r}
    return root, args, evals


def chord_eval(root, args, name, *extra):
    out = root / f"{name}.jsonl"
    printed = chord("eval", DEMO, *args, "--out", out, *extra).stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return printed, lines[:-1], lines[-1]["summary"]


def test_chord_eval_reports_the_runs_own_evaluation_of_the_same_weights(run):
    root, args, evals = run
    assert sorted(evals) == [0, 1] and evals[0]["eval/accuracy"] > 0.05
    assert evals[0]["eval/accuracy"] != evals[1]["eval/accuracy"]  # the update changed what is measured
    held_out = root / "run" / "data" / "eval.jsonl"
    base = chord_eval(root, args, "base")
    step1 = chord_eval(root, args, "step1", "--checkpoint", root / "run" / "checkpoints")
    for (printed, rows, summary), step in ((base, 0), (step1, 1)):
        # what the run logged, to the last bit: same prompts, same samples
        assert summary["accuracy"] == evals[step]["eval/accuracy"], step
        assert summary["mean_reward"] == pytest.approx(evals[step]["eval/reward"], abs=1e-12), step
        assert summary["mean_response_tokens"] == evals[step]["eval/response_length"], step
        assert len(rows) == 12 and summary["samples"] == 48
        # the data it read, printed and recorded
        assert summary["data"] == str(held_out) and f" of {held_out}: " in printed
    assert "model: the cached base model" in base[0]
    assert "(step 1)" in step1[0]


GENERATE = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, prompts, max_new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
out = []
for p in prompts:
    ids = tok(p, return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**ids, do_sample=False, max_new_tokens=max_new)
    new = gen[0, ids["input_ids"].shape[1]:].tolist()
    out.append({"prompt_ids": ids["input_ids"][0].tolist(), "new": new,
                "text": tok.decode(new, skip_special_tokens=True)})
print(json.dumps({"eos": tok.eos_token_id, "answers": out,
                  "modules": sorted(m for m in sys.modules if m.startswith("chord"))}))
"""


def test_the_export_tokenizes_and_generates_in_transformers_alone(run):
    root, args, _ = run
    hf = root / "hf"
    chord("export-hf", DEMO, root / "run" / "checkpoints", hf, *args)
    greedy = [*args, "rollout.top_p=1e-9"]  # only the most likely token may be drawn: greedy
    _, rows, _ = chord_eval(root, greedy, "greedy", "--checkpoint", root / "run" / "checkpoints", "--k", "1")

    prompts = [r["prompt"] for r in rows]
    result = subprocess.run(
        [sys.executable, "-c", GENERATE, str(hf), json.dumps(prompts), "32"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["modules"] == [] and got["eos"] == CharTokenizer.eos_id

    tok = CharTokenizer()
    stopped = 0
    for row, answer in zip(rows, got["answers"]):
        assert answer["prompt_ids"] == tok.encode_prompt(row["prompt"])  # AutoTokenizer encodes as training does
        (reason,), (text,), (n,) = row["finish_reasons"], row["responses"], row["response_tokens"]
        engine_tokens = tok.encode(text) + ([tok.eos_id] if reason == "stop" else [])
        assert len(engine_tokens) == n
        assert answer["new"] == engine_tokens, row["prompt"]  # the engine's greedy answer, token for token
        assert answer["text"] == text
        # generate() ends at <eos> (generation_config.json names it), or runs to the limit as the engine did
        assert answer["new"].count(tok.eos_id) == (reason == "stop")
        assert answer["new"][-1] == tok.eos_id if reason == "stop" else len(answer["new"]) == 32
        stopped += reason == "stop"
    assert stopped >= len(rows) // 2  # most greedy answers end; the rest loop on a digit to the limit
