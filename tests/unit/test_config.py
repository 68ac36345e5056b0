"""Config loading: YAML + overrides into typed sections, and one-line errors naming key and source."""

import pathlib

import pytest

from chord_megatron.config import Config, ConfigError, dump_config, load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]


def write(tmp_path, text, name="run.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_yaml_and_overrides_are_typed(tmp_path):
    p = write(tmp_path, "optim:\n  lr: 1e-6\nalgorithm:\n  mu: {warmup: 200, decay: 400, peak: 0.5, valley: 0.02}\n")
    cfg = load_config(p, ["algorithm.mu.valley=0.05", "train.steps=7", "rollout.server_urls=[a, b]"])
    assert cfg.optim.lr == 1e-6 and isinstance(cfg.optim.lr, float)  # YAML reads 1e-6 as a string
    assert (cfg.algorithm.mu.warmup, cfg.algorithm.mu.peak, cfg.algorithm.mu.valley) == (200, 0.5, 0.05)
    assert cfg.train.steps == 7 and cfg.rollout.server_urls == ["a", "b"]
    assert cfg.model == Config().model  # untouched sections keep their defaults


def test_override_beats_file_and_later_override_wins(tmp_path):
    p = write(tmp_path, "train:\n  steps: 5\n")
    assert load_config(p, ["train.steps=6", "train.steps=8"]).train.steps == 8


def test_pass_through_sections_keep_anything(tmp_path):
    p = write(tmp_path, "megatron:\n  attention_dropout: 0.0\n  foo: {bar: 1}\nsglang:\n  mem_fraction_static: 0.7\n")
    cfg = load_config(p, ["megatron.foo.baz=2"])
    assert cfg.megatron == {"attention_dropout": 0.0, "foo": {"bar": 1, "baz": 2}}
    assert cfg.sglang == {"mem_fraction_static": 0.7}


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["algorithm.token_weight=none", "parallel.tensor=2", "megatron.x=1"])
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg


def test_config_is_frozen():
    with pytest.raises(Exception):
        Config().train.steps = 3


# --- one test per kind of bad input: the message names the source and the key ------------------
def test_unknown_key_names_file_and_key(tmp_path):
    p = write(tmp_path, "algorithm:\n  mu:\n    peek: 0.5\n")
    assert error_of(p).startswith(f"{p}: algorithm.mu.peek: unknown key (known: warmup, decay, peak")


def test_unknown_section(tmp_path):
    p = write(tmp_path, "trainer:\n  steps: 3\n")
    assert error_of(p).startswith(f"{p}: trainer: unknown key")


def test_unknown_key_on_command_line():
    assert error_of(None, ["train.stepz=3"]).startswith("command line: train.stepz: unknown key")


@pytest.mark.parametrize(
    "line,key,expect",
    [
        ("optim:\n  lr: fast\n", "optim.lr", "expected a number, got str 'fast'"),
        ("train:\n  steps: 2.5\n", "train.steps", "expected an integer, got float 2.5"),
        ("model:\n  tie_embeddings: yes please\n", "model.tie_embeddings", "expected true or false"),
        ("rollout:\n  server_urls: http://a\n", "rollout.server_urls", "expected a list"),
        ("model: 3\n", "model", "expected a mapping, got int 3"),
        ("model:\n  name: [1]\n", "model.name", "expected a string"),
    ],
)
def test_wrong_types(tmp_path, line, key, expect):
    p = write(tmp_path, line)
    assert error_of(p).startswith(f"{p}: {key}: {expect}")


@pytest.mark.parametrize(
    "overrides,key,fragment",
    [
        (["parallel.tensor=3"], "parallel.tensor", "3 does not divide model.num_attention_heads=4"),
        (["model.num_query_groups=3"], "model.num_query_groups", "does not divide model.num_attention_heads"),
        (["parallel.pipeline=3"], "parallel.pipeline", "does not divide model.num_layers=2"),
        (["algorithm.expert_data_ratio=1.5"], "algorithm.expert_data_ratio", "must be in [0, 1]"),
        (["algorithm.expert_data_ratio=-0.1"], "algorithm.expert_data_ratio", "must be in [0, 1]"),
        (
            ["algorithm.mu.decay=100", "algorithm.mu.peak=0.01", "algorithm.mu.valley=0.1"],
            "algorithm.mu.peak",
            "is below algorithm.mu.valley=0.1",
        ),
        (["algorithm.mu.peak=1.2"], "algorithm.mu.peak", "must be in [0, 1]"),
        (["algorithm.token_weight=p2"], "algorithm.token_weight", "must be one of none, p, p1mp"),
        (["algorithm.dual_clip=0.5"], "algorithm.dual_clip", "must be > 1"),
        (["rollout.temperature=0"], "rollout.temperature", "must be > 0"),
        (["rollout.engine=sglang"], "rollout.engine", "needs rollout.router_url"),
        (["optim.lr=-1"], "optim.lr", "must be > 0"),
        (["train.micro_batch_size=0"], "train.micro_batch_size", "must be >= 1"),
        (["parallel.sequence_parallel=true"], "parallel.sequence_parallel", "needs parallel.tensor > 1"),
        (["rollout.max_new_tokens=1000"], "rollout.max_new_tokens", "exceeds model.max_seq_length"),
        (["data.task=jsonl"], "data.prompt_path", "is required when data.task is jsonl"),
    ],
)
def test_inconsistent_values(overrides, key, fragment):
    message = error_of(None, overrides)
    assert message.startswith(f"command line: {key}: ")
    assert fragment in message


def test_inconsistency_is_blamed_on_the_file_that_set_it(tmp_path):
    p = write(tmp_path, "parallel:\n  tensor: 3\n")
    assert error_of(p).startswith(f"{p}: parallel.tensor: 3 does not divide")


def test_bad_yaml_names_the_line(tmp_path):
    p = write(tmp_path, "train:\n  steps: 3\n   bad: [\n")
    message = error_of(p)
    assert message.startswith(f"{p}: line ") and "not valid YAML" in message


def test_a_json_config_error_names_its_line_and_column(tmp_path):
    # YAML reads JSON; the stray comma is on line 2
    line2 = ' {"steps": 3, "seed": 4,, "eval_every": 1}}'
    p = write(tmp_path, '{"train":\n' + line2 + "\n", name="run.json")
    column = line2.index(",,") + 2
    assert error_of(p).startswith(
        f"{p}: line 2, column {column}: not valid YAML (expected the node content, but found ',')"
    )
    # an unclosed bracket is only noticed at the end of the file: the place it opened is named
    p = write(tmp_path, "train:\n  steps: 3\n  seed: [1, 2\n")
    assert error_of(p).endswith("while parsing a flow sequence that starts at line 3, column 9)")


def test_top_level_must_be_a_mapping(tmp_path):
    assert "the top level must be a mapping" in error_of(write(tmp_path, "- a\n- b\n"))


def test_missing_file(tmp_path):
    assert "cannot read config file" in error_of(tmp_path / "nope.yaml")


def test_malformed_override():
    assert error_of(None, ["train.steps"]) == "command line: train.steps: an override must look like section.key=value"
    assert "is a value, not a section" in error_of(None, ["train.steps=3", "train.steps.x=1"])


def test_every_shipped_config_loads():
    configs = sorted((ROOT / "configs").rglob("*.yaml"))
    assert configs, "the repo ships configs"
    for path in configs:
        load_config(path)


def test_own_data_with_the_demo_config_names_base_steps():
    """The demo config trains a toy arithmetic base model first; with your own JSONL data that
    stage has nothing to train on, which is a config error naming the key (not a traceback)."""
    demo = pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    own = ["data.task=jsonl", "data.prompt_path=rl.jsonl", "data.expert_path=sft.jsonl"]
    msg = error_of(demo, own)
    assert "base.steps: trains the demo's toy base model" in msg, msg
    assert "data.task=arith" in msg and "model.hf_path" in msg
    assert load_config(demo, own + ["base.steps=0"]).base.steps == 0


def test_one_mu_schedule_for_the_loop_and_the_engine():
    """MuConfig.at is what both the loop and MegatronEngine.mu_at ask: the SFT stage, then the
    schedule counted from its end; None when mu is adaptive (it needs the step's rewards)."""
    from chord_megatron.algo import staged_mu
    from chord_megatron.config import MuConfig

    m = MuConfig(sft_steps=3, warmup=2, decay=4, peak=0.8, valley=0.2)
    assert [m.at(s) for s in range(3)] == [1.0, 1.0, 1.0]
    assert m.at(3) == 0.0 and m.at(5) == 0.8 and m.at(20) == 0.2
    assert all(m.at(s) == staged_mu(s, sft_steps=3, warmup=2, decay=4, peak=0.8, valley=0.2) for s in range(20))
    assert MuConfig(adaptive=True).at(0) is None


def test_arith_sets_larger_than_the_problem_space_are_a_config_error():
    from chord_megatron.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.arith_digits: 1-digit additions give 81 problems.*ask for 236"):
        load_config(
            None,
            [
                "data.arith_digits=1",
                "data.arith_rl_prompts=16",
                "data.arith_expert_rows=8",
                "data.arith_eval_prompts=12",
                "base.eval_every=100",
                "base.val_problems=200",
            ],
        )
    load_config(
        None,
        [
            "data.arith_digits=1",
            "data.arith_rl_prompts=16",
            "data.arith_expert_rows=8",
            "data.arith_eval_prompts=12",
            "base.eval_every=0",
        ],
    )  # 36 of 81: fits
