"""A character-level tokenizer for the generated toy task (no model hub needed).

Real models use their own Hugging Face tokenizer; this one exists so that the CPU demo and the
tests can build everything locally. Ids 0-2 are <pad>, <bos>, <eos>; the rest are characters.
save_pretrained writes the same vocabulary as a transformers tokenizer (what `chord export-hf`
ships with a demo model), so that AutoTokenizer encodes and decodes as this class does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List

SPECIALS = ("<pad>", "<bos>", "<eos>")
CHARS = "0123456789+-*=,.:;|()?cr \n"


class CharTokenizer:
    pad_id, bos_id, eos_id = 0, 1, 2
    stop_ids = (eos_id,)  # what ends a response (HFTokenizer adds generation_config's eos ids)

    def __init__(self, chars: str = CHARS):
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: duplicate characters in the alphabet")
        self.chars = chars
        self._id = {c: i + len(SPECIALS) for i, c in enumerate(chars)}

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.chars)

    def encode(self, text: str) -> List[int]:
        try:
            return [self._id[c] for c in text]
        except KeyError as e:
            raise ValueError(f"CharTokenizer: character {e.args[0]!r} is not in the alphabet {self.chars!r}") from None

    def encode_prompt(self, text: str) -> List[int]:
        """A prompt starts with <bos>, so that even an empty prompt has a position to predict from."""
        return [self.bos_id] + self.encode(text)

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str:
        out = []
        for i in ids:
            if i == self.eos_id and stop_at_eos:
                break
            if len(SPECIALS) <= i < self.vocab_size:
                out.append(self.chars[i - len(SPECIALS)])
            elif i >= self.vocab_size:  # a model whose vocabulary is padded can sample these
                out.append("\ufffd")
        return "".join(out)

    def save_pretrained(self, folder: str | Path) -> None:
        """tokenizer.json + tokenizer_config.json that AutoTokenizer.from_pretrained(folder) loads:
        the same ids, <bos> added in front of every encoded text (encode_prompt; with
        add_special_tokens=False, encode), and decode(ids, skip_special_tokens=True) as decode
        here. Characters outside the alphabet are dropped, not refused as encode refuses them."""
        from tokenizers import Tokenizer, decoders, models, processors
        from transformers import PreTrainedTokenizerFast

        vocab = {**{s: i for i, s in enumerate(SPECIALS)}, **self._id}
        # BPE without merges: every character its own token, no pre-tokenizer to split or eat spaces.
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.decoder = decoders.Fuse()  # join tokens as they are (the default decoder puts spaces between)
        bos = SPECIALS[self.bos_id]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, self.bos_id)]
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token=SPECIALS[self.pad_id], bos_token=bos, eos_token=SPECIALS[self.eos_id]
        )
        fast.save_pretrained(str(folder))
        # The class name transformers 4 knows as well (5 writes its new backend's name).
        config = Path(folder) / "tokenizer_config.json"
        config.write_text(
            json.dumps({**json.loads(config.read_text()), "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2)
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"type": "char", "specials": SPECIALS, "chars": self.chars}))

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        return cls(json.loads(Path(path).read_text())["chars"])
