"""Data: what a run trains on.

tokenizer.py, hf_tokenizer.py  the character tokenizer (demo) and Hugging Face tokenizers
jsonl.py       validated JSONL / Parquet loading of prompt and expert rows (DataError)
overlap.py     RL prompts that are also expert problems, found by normalised text
task.py        a run's task: tokenizer, prompts, expert rows, held-out set, per-step sampling
batch.py       rollouts + expert rows -> TrainBatch; how many expert rows a step adds
seeding.py     every seed a run derives from (seed, step) and a named salt
prep_*.py      `chord data prep-openr1 | prep-toolace` (prep_common.py: what they share)
"""

from .jsonl import DataError, ExpertRow, PromptRow, load_expert, load_prompts, write_jsonl
from .tokenizer import CharTokenizer

__all__ = ["CharTokenizer", "DataError", "ExpertRow", "PromptRow", "load_expert", "load_prompts", "write_jsonl"]
