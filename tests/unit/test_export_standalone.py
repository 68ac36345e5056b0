"""An exported folder stands on its own in transformers (hf/export.py, data/tokenizer.py):

* the demo's character tokenizer saved as a transformers tokenizer: AutoTokenizer encodes and
  decodes exactly as CharTokenizer, and so does chord's own HFTokenizer over the same folder
  (an export can be the model.hf_path of a later run);
* a model made from the model section gets the tokenizer's bos / eos / pad ids in config.json
  and generation_config.json; one from an HF checkpoint keeps the checkpoint's files.

The full path (a trained demo checkpoint through `chord export-hf`, generating in a fresh
process) is tests/e2e/test_run_outside_training.py.
"""

import json
import random

import pytest

from chord_megatron.data.tokenizer import CHARS, CharTokenizer
from tests.support.chord_cli import DEMO


def texts(n=200, seed=0):
    rng = random.Random(seed)
    return ["", " ", "\n\n", CHARS] + ["".join(rng.choice(CHARS) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def test_the_character_tokenizer_saved_for_transformers_encodes_and_decodes_alike(tmp_path):
    from transformers import AutoTokenizer

    from chord_megatron.data.hf_tokenizer import HFTokenizer

    char = CharTokenizer()
    char.save_pretrained(tmp_path)
    auto = AutoTokenizer.from_pretrained(str(tmp_path))
    ours = HFTokenizer.from_pretrained(tmp_path)
    assert (auto.pad_token_id, auto.bos_token_id, auto.eos_token_id, len(auto)) == (0, 1, 2, char.vocab_size)
    assert (ours.pad_id, ours.bos_id, ours.eos_id, ours.vocab_size) == (0, 1, 2, char.vocab_size)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    for text in texts():
        ids = char.encode(text)
        assert auto.encode(text) == char.encode_prompt(text), repr(text)  # <bos> in front, as prompts get it
        assert auto.encode(text, add_special_tokens=False) == ids, repr(text)
        assert ours.encode_prompt(text) == char.encode_prompt(text) and ours.encode(text) == ids
        answer = char.encode_prompt(text) + [char.eos_id]
        assert auto.decode(answer, skip_special_tokens=True) == char.decode(answer) == text
        assert ours.decode(answer + char.encode("12")) == char.decode(answer + char.encode("12")) == text
    # a batch pads with <pad> on the right, as the trainer's rows are padded
    batch = auto(["1+2=", "10+20="], padding=True)["input_ids"]
    assert batch[0] == char.encode_prompt("1+2=") + [char.pad_id] * 2


def _demo_weights(cfg):
    """Megatron-named tensors of a random model for cfg's model section."""
    from chord_megatron.rollout.inprocess import build_hf_model
    from chord_megatron.weight_sync.convert import Layout, hf_to_megatron

    model = build_hf_model(cfg.model)
    return hf_to_megatron(model.state_dict().items(), Layout.from_model_config(cfg.model))


def test_a_demo_export_carries_its_tokenizer_and_special_ids(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from chord_megatron.config import load_config
    from chord_megatron.hf.export import export_hf

    cfg = load_config(str(DEMO), [])
    out = export_hf(_demo_weights(cfg), cfg, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
    gen = GenerationConfig.from_pretrained(str(out))
    assert (gen.eos_token_id, gen.pad_token_id) == (2, 0)
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.eos_token_id == tok.eos_token_id == 2


def test_an_export_from_an_hf_checkpoint_keeps_its_tokenizer_and_ids(tmp_path):
    from chord_megatron.hf.export import export_hf
    from chord_megatron.hf.weights import hf_state_dict
    from tests.support.hf_models import config_for, make_checkpoint

    source, _ = make_checkpoint(tmp_path / "src", "qwen2")
    (source / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 6], "bos_token_id": 1}))
    cfg = config_for(source)
    out = export_hf(iter(dict(hf_state_dict(cfg)).items()), cfg, tmp_path / "out")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes(), name
    config = json.loads((out / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"]) == (2, 0)


@pytest.mark.parametrize("text", ["7x", "\t1"])
def test_characters_outside_the_alphabet(tmp_path, text):
    """CharTokenizer refuses them (naming the character); the saved one drops them."""
    from transformers import AutoTokenizer

    CharTokenizer().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is not in the alphabet"):
        CharTokenizer().encode(text)
    assert AutoTokenizer.from_pretrained(str(tmp_path)).encode(text, add_special_tokens=False) == [
        CharTokenizer().encode(c)[0] for c in text if c in CHARS
    ]
