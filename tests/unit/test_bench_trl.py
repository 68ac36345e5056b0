"""`chord bench loop --vs-trl` (commands/bench_trl.py, bench_loop.py): what TRL is given.

Without TRL (CI): the config -> GRPOConfig mapping, setting by setting; TRL's LR schedule
against chord's own Megatron scheduler; the refusals of settings TRL cannot match; the prompts
as text that the exported tokenizer encodes back to chord's ids; the one-line refusal when TRL
is absent; the printed comparison. With TRL (skipped without): GRPOConfig accepts the mapping
as one generation batch per step; TRL's loss under the mapping is chord_loss at mu = 0 (value and
gradient, clipping included); a 3-step GRPOTrainer run on a tiny demo config gives steps/s, an
accuracy curve at chord's evaluation steps and a training reward per step.
"""

import math
from importlib import metadata

import pytest
import torch

from chord_megatron import cli
from chord_megatron.commands.bench_loop import format_result, summarize_trl
from chord_megatron.commands.bench_trl import (
    TrlBenchError,
    check_comparable,
    grpo_config_kwargs,
    prompt_texts,
    require_trl,
    steps_per_second,
)
from chord_megatron.commands.compare_variants import variants
from chord_megatron.config import load_config
from tests.support.chord_cli import DEMO, SHORT


def grpo_config(*extra, steps=5):
    cfg = load_config(str(DEMO), [*SHORT, *extra])
    return load_config(str(DEMO), [*SHORT, *extra, *variants(cfg)["grpo"], f"train.steps={steps}"])


def test_the_mapping_gives_trl_the_configs_hyper_parameters():
    cfg = grpo_config(
        "algorithm.clip_low=0.15",
        "algorithm.clip_high=0.28",
        "optim.lr=2e-4",
        "optim.min_lr=1e-5",
        "optim.lr_warmup_steps=2",
        "optim.weight_decay=0.01",
        "optim.adam_beta2=0.95",
        "optim.adam_eps=1e-7",
        "optim.grad_clip=0.5",
        "rollout.temperature=0.8",
        "rollout.top_p=0.9",
        "train.seed=7",
    )
    kw = grpo_config_kwargs(cfg, output_dir="/o", bf16=True)
    r, o = cfg.rollout, cfg.optim
    assert (kw["num_generations"], kw["max_completion_length"]) == (r.samples_per_prompt, r.max_new_tokens)
    # SHORT: 4 prompts x 4 samples = 16 rows per step, micro-batches of 8 -> 2 accumulated halves
    assert (kw["per_device_train_batch_size"], kw["gradient_accumulation_steps"]) == (8, 2)
    assert (kw["temperature"], kw["top_p"], kw["top_k"], kw["repetition_penalty"]) == (0.8, 0.9, 0, 1.0)
    assert (kw["epsilon"], kw["epsilon_high"], kw["importance_sampling_level"]) == (0.15, 0.28, "token")
    assert (kw["loss_type"], kw["beta"], kw["num_iterations"], kw["entropy_coef"]) == ("dapo", 0.0, 1, 0.0)
    assert (kw["scale_rewards"], kw["mask_truncated_completions"], kw["use_vllm"]) == ("group", False, False)
    assert (kw["learning_rate"], kw["warmup_steps"], kw["max_steps"]) == (2e-4, 2, 5)
    assert (kw["lr_scheduler_type"], kw["lr_scheduler_kwargs"]) == ("cosine_with_min_lr", {"min_lr": 1e-5})
    assert (kw["adam_beta1"], kw["adam_beta2"], kw["adam_epsilon"]) == (o.adam_beta1, 0.95, 1e-7)
    assert (kw["weight_decay"], kw["max_grad_norm"], kw["optim"]) == (0.01, 0.5, "adamw_torch")
    assert (kw["seed"], kw["shuffle_dataset"], kw["bf16"], kw["gradient_checkpointing"]) == (7, False, True, False)
    assert kw["output_dir"] == "/o" and kw["report_to"] == "none" and kw["save_strategy"] == "no"

    mean_only = grpo_config_kwargs(grpo_config("algorithm.adv_scale=none"), output_dir="/o", bf16=False)
    assert mean_only["scale_rewards"] == "none"
    for micro, want in ((64, (16, 1)), (16, (16, 1)), (6, (4, 4)), (5, (4, 4)), (1, (1, 16))):
        kw = grpo_config_kwargs(grpo_config(f"train.micro_batch_size={micro}"), output_dir="/o", bf16=False)
        assert (kw["per_device_train_batch_size"], kw["gradient_accumulation_steps"]) == want, micro


@pytest.mark.parametrize(
    "schedule",
    [
        ["optim.lr_schedule=cosine", "optim.min_lr=1e-4", "optim.lr_warmup_steps=0"],
        ["optim.lr_schedule=cosine", "optim.min_lr=1e-4", "optim.lr_warmup_steps=3"],
        ["optim.lr_schedule=constant", "optim.lr_warmup_steps=2"],
        ["optim.lr_schedule=linear", "optim.min_lr=0", "optim.lr_warmup_steps=1"],
    ],
)
def test_trls_learning_rate_schedule_is_chords(schedule):
    from transformers import get_scheduler

    from chord_megatron.train.optim import lr_scheduler

    cfg = grpo_config("optim.lr=3e-3", *schedule, steps=12)
    kw = grpo_config_kwargs(cfg, output_dir="/o", bf16=False)
    ours = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    megatron = lr_scheduler(cfg, ours)
    theirs = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=kw["learning_rate"])
    trl = get_scheduler(
        kw["lr_scheduler_type"],
        theirs,
        num_warmup_steps=kw["warmup_steps"],
        num_training_steps=kw["max_steps"],
        scheduler_specific_kwargs=kw.get("lr_scheduler_kwargs"),
    )
    chord_lrs, trl_lrs = [], []
    for _ in range(cfg.train.steps):  # the rate each update is taken at
        chord_lrs.append(ours.param_groups[0]["lr"])
        trl_lrs.append(theirs.param_groups[0]["lr"])
        megatron.step(increment=1)
        theirs.step()
        trl.step()
    assert trl_lrs == pytest.approx(chord_lrs, rel=1e-9, abs=1e-12)
    assert len(set(chord_lrs)) > 1  # the schedules moved


def test_asynchronous_generation_is_compared_with_trls_synchronous_run():
    check_comparable(grpo_config("rollout.asynchronous=true"), 5)  # chord's own way to run GRPO


@pytest.mark.parametrize(
    "extra, message",
    [
        (["algorithm.dual_clip=3.0"], "algorithm.dual_clip: TRL's GRPOTrainer"),
        (["algorithm.tis_cap=2.0"], "algorithm.tis_cap"),
        (["rollout.sync_every=2"], "rollout.sync_every"),
        (["rollout.samples_per_prompt=1"], "groups of 2 or more"),
        (["optim.lr_schedule=linear", "optim.min_lr=1e-4"], "linear with min_lr > 0"),
        (["base.steps=0"], "no base model"),
        (["algorithm.mu.adaptive=true"], "mu is not 0 at step 0"),
        (["algorithm.mu.sft_steps=2"], "mu is not 0 at step 0"),
    ],
)
def test_settings_trl_cannot_match_are_refused_in_one_line(extra, message):
    with pytest.raises(TrlBenchError, match=message) as e:
        check_comparable(grpo_config(*extra), 5)
    assert "\n" not in e.value.one_line() and e.value.exit_code == 2


def test_the_grpo_variant_is_comparable_and_the_method_is_not():
    check_comparable(grpo_config(), 5)
    with pytest.raises(TrlBenchError, match="--steps 2"):
        check_comparable(grpo_config(), 2)
    chord_mu = load_config(str(DEMO), SHORT)  # the demo's own CHORD-mu schedule
    with pytest.raises(TrlBenchError, match="mu is not 0"):
        check_comparable(chord_mu, 5)


def test_prompts_go_to_trl_as_text_that_encodes_to_chords_ids(tmp_path):
    from transformers import AutoTokenizer

    from chord_megatron.data.task import load_task
    from chord_megatron.data.tokenizer import CharTokenizer

    cfg = grpo_config(f"train.output_dir={tmp_path / 'run'}")
    task = load_task(cfg)
    CharTokenizer().save_pretrained(tmp_path / "tok")  # what export_hf writes for the demo
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    rows = task.rl_prompts(0, 4) + task.rl_prompts(1, 4)
    texts = prompt_texts(tok, rows)
    assert texts == [r.raw_prompt for r in rows] and texts[0].endswith("=")
    assert tok(texts)["input_ids"] == [r.prompt_ids for r in rows]  # TRL's own call

    class Row:
        prompt_ids = [1, 1] + CharTokenizer().encode("12+34=")  # two <bos>: no text encodes to it

    with pytest.raises(TrlBenchError, match="prompt 1 .*TRL would see another prompt"):
        prompt_texts(tok, [rows[0], Row()])


def test_without_trl_the_bench_stops_in_one_line_saying_how_to_install_it(monkeypatch, capsys):
    def version(name):
        if name == "trl":
            raise metadata.PackageNotFoundError(name)
        return metadata.version(name)

    monkeypatch.setattr(metadata, "version", version)
    with pytest.raises(TrlBenchError, match=r"pip install -e '\.\[trl\]' \(trl==1\.16\.0\)"):
        require_trl()
    assert cli.main(["bench", "loop", str(DEMO), "--vs-trl", "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("chord: bench loop --vs-trl: TRL is not installed"), err

    monkeypatch.setattr(metadata, "version", lambda name: "1.17.0" if name == "trl" else version(name))
    with pytest.raises(TrlBenchError, match="TRL 1.17.0 is installed; the settings mapping is written for 1.16.0"):
        require_trl()


def test_the_comparison_prints_both_speeds_the_ratio_and_both_curves():
    trl_runs = [
        {"steps_per_s": 2.0, "eval_accuracy": {0: 0.5, 3: 0.25}, "train_reward": [0.1, 0.2, 0.3]},
        {"steps_per_s": 4.0, "eval_accuracy": {0: 0.5, 3: 0.75}, "train_reward": [0.1, 0.2, 0.3]},
        {"steps_per_s": 1.0, "eval_accuracy": {0: 0.5, 3: 0.5}, "train_reward": [0.1, 0.2, 0.3]},
    ]
    cfg = grpo_config(steps=3)
    got = summarize_trl(trl_runs, cfg, chord_steps_per_s=3.0, forced=variants(cfg)["grpo"])
    assert got["trl"]["steps_per_s"] == 2.0 and got["chord_over_trl"] == 1.5
    assert got["trl"]["grpo_config"]["loss_type"] == "dapo" and "bf16" not in got["trl"]["grpo_config"]
    result = {
        "command": "chord bench loop c --steps 3 --vs-trl",
        "cpu": "cpu",
        "torch_threads": 2,
        "commit": "abc",
        "runs": 3,
        "steps_per_s": 3.0,
        "steps_per_s_runs": [3.0, 3.0, 3.0],
        "phase_seconds": {"waiting for rollouts (asynchronous)": 0.0, "generate": 0.3},
        "eval_accuracy": {0: {0: 0.5, 3: 0.6}},
        **got,
    }
    text = format_result(result)
    assert "TRL 1.16.0 GRPOTrainer steps/s: 2 (runs: 2 4 1)" in text
    assert "chord/TRL steps/s: 1.50x" in text
    assert "run 0 held-out accuracy by step: 0: 0.500, 3: 0.600" in text
    assert "TRL run 1 held-out accuracy by step: 0: 0.500, 3: 0.750" in text
    assert "algorithm.mu.peak=0" in text


def test_steps_per_second_leaves_out_the_start_up():
    assert steps_per_second([10.0, 11.0, 11.5, 13.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 3 steps"):
        steps_per_second([1.0, 2.0])


# --- with TRL installed -------------------------------------------------------------------------


def test_grpo_config_takes_the_mapping_as_one_generation_per_step(tmp_path):
    pytest.importorskip("trl")
    from trl import GRPOConfig

    cfg = grpo_config()
    args = GRPOConfig(**grpo_config_kwargs(cfg, output_dir=str(tmp_path), bf16=False))
    batch = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    assert args.generation_batch_size == batch and args.steps_per_generation == args.gradient_accumulation_steps
    assert (args.epsilon, args.epsilon_high, args.loss_type) == (
        cfg.algorithm.clip_low,
        cfg.algorithm.clip_high,
        "dapo",
    )
    assert args.bf16 is False and args.gradient_checkpointing is False


def _cache_a_base_model(cfg):
    """Stand in for the base stage: a random model of cfg's shape, cached where base_weights
    looks (chord's own runs write it there)."""
    from chord_megatron.demo.base_model import cache_path
    from chord_megatron.rollout.inprocess import build_hf_model
    from chord_megatron.weight_sync.convert import Layout, hf_to_megatron

    model = build_hf_model(cfg.model, seed=3)
    weights = dict(hf_to_megatron(model.state_dict().items(), Layout.from_model_config(cfg.model)))
    path = cache_path(cfg)
    path.parent.mkdir(parents=True)
    torch.save(weights, path)


def test_a_three_step_trl_run_gives_steps_per_second_and_an_accuracy_curve(tmp_path):
    pytest.importorskip("trl")
    from chord_megatron.commands.bench_trl import prepare, train_trl

    cfg = grpo_config(f"base.cache_dir={tmp_path / 'base'}", "train.eval_every=2", "rollout.max_new_tokens=16", steps=3)
    check_comparable(cfg, 3)
    _cache_a_base_model(cfg)
    inputs = prepare(cfg, tmp_path / "trl")
    assert (inputs.model_dir / "config.json").is_file() and (inputs.model_dir / "tokenizer.json").is_file()
    assert [r.prompt_ids for r in inputs.rows] == [
        r.prompt_ids for s in range(3) for r in inputs.task.rl_prompts(s, cfg.rollout.prompts_per_step)
    ]
    got = train_trl(inputs, tmp_path / "run0")
    assert got["steps_per_s"] > 0 and math.isfinite(got["steps_per_s"])
    assert sorted(got["eval_accuracy"]) == [0, 2, 3]  # before the first update, every 2nd, the last
    assert all(0.0 <= a <= 1.0 for a in got["eval_accuracy"].values())
    assert len(got["train_reward"]) == 3  # one scored batch per step
    assert all(-1.0 <= x <= 1.0 for x in got["train_reward"])


def test_trls_loss_is_chords_grpo_loss(tmp_path):
    """TRL's loss (loss_type, epsilon / epsilon_high as mapped) on a batch of completions, against
    chord_loss at mu = 0 on the same tokens, advantages and old log-probs: same value, same
    gradient -- with old log-probs off the current ones, so that both clip bounds bind."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from chord_megatron.algo import chord_loss
    from chord_megatron.data.tokenizer import CharTokenizer
    from chord_megatron.rollout.inprocess import build_hf_model

    cfg = grpo_config("algorithm.clip_low=0.1", "algorithm.clip_high=0.3", "rollout.temperature=0.7")
    CharTokenizer().save_pretrained(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    model = build_hf_model(cfg.model, seed=5).train()
    args = GRPOConfig(**grpo_config_kwargs(cfg, output_dir=str(tmp_path / "o"), bf16=False))
    data = Dataset.from_dict({"prompt": ["1+2="] * 4})
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
        args=args,
        train_dataset=data,
        processing_class=tok,
    )
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps

    g = torch.Generator().manual_seed(0)
    rows, prompt_len, resp_len = 6, 5, 7
    prompt_ids = torch.randint(3, 29, (rows, prompt_len), generator=g)
    completion_ids = torch.randint(3, 29, (rows, resp_len), generator=g)
    completion_mask = torch.ones(rows, resp_len, dtype=torch.long)
    for i, n in enumerate([7, 3, 5, 1, 6, 2]):  # responses of different lengths (right-padded)
        completion_mask[i, n:] = 0
    advantages = torch.randn(rows, generator=g)

    logits = model(input_ids=torch.cat([prompt_ids, completion_ids], 1)).logits[:, prompt_len - 1 : -1]
    logp = torch.log_softmax(logits.float() / cfg.rollout.temperature, -1)
    logp = logp.gather(-1, completion_ids[..., None]).squeeze(-1)
    old = (logp.detach() + 0.4 * torch.randn(rows, resp_len, generator=g)) * completion_mask
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "num_items_in_batch": completion_mask.sum(),
    }
    theirs = trainer._compute_loss(model, inputs)
    (their_grad,) = torch.autograd.grad(theirs, [model.model.embed_tokens.weight])
    ours, metrics = chord_loss(
        logp,
        old,
        advantages,
        completion_mask,
        torch.zeros(rows, dtype=torch.bool),
        0.0,
        clip_low=cfg.algorithm.clip_low,
        clip_high=cfg.algorithm.clip_high,
    )
    (our_grad,) = torch.autograd.grad(ours, [model.model.embed_tokens.weight])
    assert 0.0 < float(metrics["clip_frac"]) < 1.0  # some tokens clipped, some not
    assert theirs.item() == pytest.approx(ours.item(), rel=1e-5)
    torch.testing.assert_close(their_grad, our_grad, rtol=1e-4, atol=1e-7)
