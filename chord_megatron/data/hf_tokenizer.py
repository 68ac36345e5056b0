"""A Hugging Face tokenizer (read from a local folder) behind the interface the task uses.

    tok = HFTokenizer.from_pretrained("/models/Qwen2.5-7B-Instruct")
    tok.encode(text), tok.encode_prompt(text), tok.decode(ids), tok.eos_id, tok.pad_id, tok.vocab_size
    tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)   # when it has one

Prompts get the tokenizer's <bos> when it has one and the text does not already start with it
(a chat template usually writes it itself); responses never get special tokens added. eos_id is
the tokenizer's eos token -- for instruct models the end-of-turn token (<|im_end|>,
<|eot_id|>) -- and stop_ids adds every eos id of generation_config.json. decode() stops at the
first stop id, as CharTokenizer.decode stops at <eos>, and leaves special tokens out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple


class HFTokenizer:
    def __init__(self, tokenizer, *, extra_stop_ids: Sequence[int] = ()):
        self.tok = tokenizer
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos token")
        self.eos_id = int(tokenizer.eos_token_id)
        self.bos_id = tokenizer.bos_token_id
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id)
        self.stop_ids: Tuple[int, ...] = tuple(dict.fromkeys([self.eos_id, *map(int, extra_stop_ids)]))
        if getattr(tokenizer, "chat_template", None):
            # jsonl.py applies a chat template when the tokenizer has this attribute.
            self.apply_chat_template = tokenizer.apply_chat_template

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "HFTokenizer":
        from transformers import AutoTokenizer

        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such tokenizer folder (a local Hugging Face folder is needed)")
        try:
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:  # transformers' message runs over many lines
            from ..hf.config import HFCheckpointError

            first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise HFCheckpointError(f"{folder}: no tokenizer transformers can load ({first})") from None
        return cls(tok, extra_stop_ids=_generation_eos_ids(folder))

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> List[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def encode_prompt(self, text: str) -> List[int]:
        ids = self.encode(text)
        if self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [int(self.bos_id)] + ids
        return ids

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str:
        out = []
        for i in ids:
            if stop_at_eos and i in self.stop_ids:
                break
            out.append(int(i))
        return self.tok.decode(out, skip_special_tokens=True)


def _generation_eos_ids(folder: Path) -> List[int]:
    f = folder / "generation_config.json"
    if not f.is_file():
        return []
    eos = json.loads(f.read_text()).get("eos_token_id")
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def load_tokenizer(cfg):
    """The task's tokenizer: data.tokenizer, else model.hf_path's, else the toy CharTokenizer."""
    from .tokenizer import CharTokenizer

    path = cfg.data.tokenizer or cfg.model.hf_path
    return HFTokenizer.from_pretrained(path) if path else CharTokenizer()
