"""Data: the generated arithmetic task, the character tokenizer, validated JSONL loading."""
from .jsonl import DataError, ExpertRow, PromptRow, load_expert, load_prompts, write_jsonl
from .tokenizer import CharTokenizer

__all__ = ["CharTokenizer", "DataError", "ExpertRow", "PromptRow", "load_expert", "load_prompts", "write_jsonl"]
