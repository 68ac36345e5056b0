"""Loading prepared data: Parquet files, a Hugging Face tokenizer with its chat template, and the
removal of RL prompts that are also expert problems."""

import json

import pytest

from tests.support.hf_models import make_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    make_tokenizer(d)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 6]}))
    return d


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hf_tokenizer_adapter(tok_dir):
    from chord_megatron.data.hf_tokenizer import HFTokenizer

    tok = HFTokenizer.from_pretrained(tok_dir)
    assert (tok.eos_id, tok.pad_id, tok.bos_id, tok.stop_ids) == (2, 0, 1, (2, 6))
    ids = tok.encode("what is 3 + 4")
    assert ids and 1 not in ids  # no special tokens added to text
    assert tok.encode_prompt("what is 3") == [1] + tok.encode("what is 3")
    assert tok.encode_prompt("<s> what is 3") == tok.encode("<s> what is 3")  # already there: not doubled
    assert tok.decode(ids + [6] + tok.encode("the")) == "what is 3 + 4"  # stops at <|end|> (generation_config eos)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "what is 3"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|user|>what is 3<|end|><|assistant|>"


def test_parquet_prompts_and_expert_rows(tmp_path, tok_dir):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from chord_megatron.data import load_expert, load_prompts
    from chord_megatron.data.hf_tokenizer import HFTokenizer

    tok = HFTokenizer.from_pretrained(tok_dir)
    rows = [
        {"prompt": "what is 3", "messages": None, "answer": "3"},
        {"prompt": None, "messages": [{"role": "user", "content": "what is 4"}], "answer": "4"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "p.parquet"))
    prompts, skipped = load_prompts(tmp_path / "p.parquet", tok, max_prompt_tokens=32)
    assert [p.prompt for p in prompts] == ["what is 3", "<|user|>what is 4<|end|><|assistant|>"]
    assert prompts[1].prompt_ids[0] == 1 and prompts[1].answer == "4" and prompts[1].source.endswith("p.parquet:2")
    expert = [{"messages": [{"role": "user", "content": "what is 4"}, {"role": "assistant", "content": "4"}]}]
    pq.write_table(pa.Table.from_pylist(expert), str(tmp_path / "e.parquet"))
    rows_, _ = load_expert(tmp_path / "e.parquet", tok, max_prompt_tokens=32, max_response_tokens=8)
    assert rows_[0].response_ids == tok.encode("4") + [tok.eos_id]
    assert rows_[0].raw_prompt == "user: what is 4" and prompts[1].raw_prompt == "user: what is 4"


def test_load_task_uses_the_hf_tokenizer_and_drops_rl_prompts_in_the_expert_set(tmp_path, tok_dir):
    from chord_megatron.config import load_config
    from chord_megatron.data.hf_tokenizer import HFTokenizer
    from chord_megatron.data.task import load_task

    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    write_jsonl(
        tmp_path / "rl.jsonl",
        [
            {"messages": user("what is 3"), "answer": "3"},
            {"messages": user("What  is 4 "), "answer": "4"},  # = an expert problem
            {"messages": user("what is 5"), "answer": "5"},
        ],
    )
    write_jsonl(tmp_path / "sft.jsonl", [{"messages": user("what is 4") + [{"role": "assistant", "content": "4"}]}])
    cfg = load_config(
        None,
        [
            "data.task=jsonl",
            f"data.prompt_path={tmp_path / 'rl.jsonl'}",
            f"data.expert_path={tmp_path / 'sft.jsonl'}",
            f"data.tokenizer={tok_dir}",
            "model.vocab_size=96",
            "data.reward=math",
            "base.steps=0",
        ],
    )
    task = load_task(cfg)
    assert isinstance(task.tokenizer, HFTokenizer)
    assert [p.answer for p in task.prompts] == ["3", "5"]
    assert task.skipped["prompts"]["in_expert_set"] == 1
    assert len(task.expert) == 1 and task.reward_name == "math"


def test_overlap_normalisation():
    from chord_megatron.data.overlap import drop_overlap, normalise_prompt

    assert normalise_prompt("  What\tIS\n 3？ ") == normalise_prompt("what is 3?")  # NFKC: full-width ?
    kept, n = drop_overlap(["a b", "A  B", "c"], ["a b"], key=lambda s: s)
    assert kept == ["c"] and n == 2
