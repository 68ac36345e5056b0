"""The RolloutEngine contract helpers: SamplingParams checks and sample-coverage checks."""

import pytest

from chord_megatron.config import RolloutConfig
from chord_megatron.rollout.engine import RolloutError, SamplingParams, check_complete
from chord_megatron.types import Rollout


def _r(p, s):
    return Rollout(
        prompt_ids=[1], response_ids=[2], logprobs=[-0.1], finish_reason="stop", prompt_index=p, sample_index=s
    )


def test_sampling_params_from_config():
    sp = SamplingParams.from_config(RolloutConfig(temperature=0.7, top_p=0.9, max_new_tokens=12), stop_token_ids=[5])
    assert (sp.max_new_tokens, sp.temperature, sp.top_p, sp.stop_token_ids) == (12, 0.7, 0.9, (5,))


@pytest.mark.parametrize(
    "kw",
    [
        dict(max_new_tokens=0),
        dict(max_new_tokens=4, temperature=0.0),
        dict(max_new_tokens=4, top_p=0.0),
        dict(max_new_tokens=4, top_p=1.5),
    ],
)
def test_sampling_params_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw)


def test_check_complete_accepts_full_ordered_set():
    check_complete([_r(p, s) for p in range(3) for s in range(2)], 3, 2)


def test_check_complete_names_missing_and_duplicated():
    rs = [_r(0, 0), _r(0, 0), _r(1, 0), _r(1, 1)]
    with pytest.raises(RolloutError, match=r"missing \(prompt, sample\) \[\(0, 1\)\].*duplicated \[\(0, 0\)\]"):
        check_complete(rs, 2, 2)


def test_check_complete_rejects_out_of_order():
    with pytest.raises(RolloutError, match="out of order"):
        check_complete([_r(0, 1), _r(0, 0)], 1, 2)
