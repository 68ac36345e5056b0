"""Samples cut by an abort (finish reason "abort": a pause, /abort_request, a server dropping
them) are regenerated before scoring, counted in the metrics, and never scored or trained on as
complete answers. Against a fake SGLang worker that answers its first /generate as aborted."""

import contextlib

import pytest

from chord_megatron.rollout.engine import RolloutError, SamplingParams, generate_complete
from chord_megatron.rollout.sglang.client import SGLangClient
from chord_megatron.rollout.sglang.engine import SGLangEngine
from tests.support import fake_sglang

SP = SamplingParams(max_new_tokens=6, temperature=1.0, stop_token_ids=(fake_sglang.EOS,))
PROMPTS = [[i + 1, 7, 3 * i] for i in range(3)]


@pytest.fixture
def worker(tmp_path):
    """worker(*args): a fake worker with these arguments, stopped at the end of the test."""
    with contextlib.ExitStack() as stack:
        yield lambda *extra: stack.enter_context(fake_sglang.running(1, tmp_path, {0: list(extra)}))[0]


def engine_for(w):
    # concurrency=1: the prompts reach the worker in order, so the first (aborted) answer is prompt 0's
    return SGLangEngine(SGLangClient([w.url], [w.url], backoff_s=0.05, concurrency=1))


def test_aborted_group_is_regenerated_and_counted(worker):
    with engine_for(worker("--abort-generates", "1")) as eng:  # without regeneration the cut samples come back
        assert {r.finish_reason for r in eng.generate(PROMPTS[:1], 2, SP)} == {"abort"}
    with engine_for(worker("--abort-generates", "1")) as eng:
        rollouts, aborted = generate_complete(eng, PROMPTS, 2, SP)
    assert aborted == 2  # prompt 0's two samples
    assert [(r.prompt_index, r.sample_index) for r in rollouts] == [(p, j) for p in range(3) for j in range(2)]
    for r in rollouts:  # each is the complete answer the fake draws for its own prompt
        toks, finish = fake_sglang.sample_tokens(r.prompt_ids, r.sample_index, SP.max_new_tokens, [fake_sglang.EOS], 64)
        assert r.prompt_ids == PROMPTS[r.prompt_index]
        assert (r.response_ids, r.finish_reason) == (toks, finish["type"])


def test_samples_aborted_every_time_stop_the_run(worker):
    w = worker("--abort-generates", "1000")
    with engine_for(w) as eng:
        with pytest.raises(
            RolloutError,
            match=r"prompts \[0, 1\] still had aborted samples after 2 regenerations "
            r"\(the server's reason: Abort request\)",
        ):
            generate_complete(eng, PROMPTS[:2], 2, SP, rounds=2)


def test_scoring_refuses_aborted_samples():
    from chord_megatron.rewards.scoring import score
    from chord_megatron.types import Rollout

    cut = Rollout(
        prompt_ids=[1],
        response_ids=[5],
        logprobs=[-0.1],
        finish_reason="abort",
        weight_version=None,
        prompt_index=0,
        sample_index=0,
    )
    with pytest.raises(ValueError, match="aborted samples"):
        score(lambda jobs: [1.0] * len(jobs), "exact_match", None, [cut], [None])


def test_collect_regenerates_and_reports_rollout_aborted(worker, tmp_path):
    from chord_megatron.config import load_config
    from chord_megatron.rewards.scoring import Scorer
    from chord_megatron.services import Services

    cfg = load_config(
        None,
        [
            f"train.output_dir={tmp_path}",
            "rollout.prompts_per_step=2",
            "rollout.samples_per_prompt=2",
            "rollout.max_new_tokens=6",
        ],
    )
    services = Services(cfg)
    w = worker("--abort-generates", "1", "--vocab", "16")
    with engine_for(w) as eng, Scorer(services.task.reward_name) as scorer:
        services.rollout, services.scorer = eng, scorer
        data = services._collect(0, 0.0)
    assert data.metrics["rollout/aborted"] == 2.0
    assert len(data.rewards) == 4
