"""The README's "Parity with Trinity-RFT" notes: the numbers it states are computed here, and the
paper configs say which convention they follow.

Trinity-RFT's mu_schedule_function is the same formula as ours; it is called with its global
step, which counts from 1, where the loop calls ours with the step counted from 0. So the k-th
update differs by one step of the schedule: max_k |mu(k) - mu(k - 1)|.
"""

import math
import re
from pathlib import Path

import pytest
import torch

from chord_megatron.algo import group_advantages, mu_schedule

ROOT = Path(__file__).resolve().parents[2]
PAPER = sorted((ROOT / "configs" / "paper").glob("*.yaml"))


def _max_one_step_gap(decay: int, peak: float, valley: float) -> float:
    mus = [mu_schedule(s, warmup=0, decay=decay, peak=peak, valley=valley) for s in range(2 * decay + 2)]
    return max(abs(a - b) for a, b in zip(mus, mus[1:]))


def _bound(decay: int, peak: float, valley: float) -> float:
    """Independently: (peak - valley)/2 * |cos(x) - cos(x + h)| <= (peak - valley)/2 * 2 sin(h/2),
    h = pi / decay, the largest one-step change of a half cosine sampled at `decay` points."""
    return (peak - valley) / 2 * 2 * math.sin(math.pi / decay / 2)


def test_mu_indexing_gap_on_the_papers_math_schedule_is_under_0_007():
    gap = _max_one_step_gap(200, 0.9, 0.05)
    assert gap <= 0.007  # the README's number
    assert gap == pytest.approx(0.0067, abs=5e-5)
    assert gap <= _bound(200, 0.9, 0.05) + 1e-12
    assert gap > 0.99 * _bound(200, 0.9, 0.05)  # the bound is attained near the middle of the decay


def test_mu_indexing_gap_on_the_tool_use_schedule():
    gap = _max_one_step_gap(20, 0.6, 0.0)
    assert gap == pytest.approx(0.047, abs=5e-4)  # the README's number
    assert gap <= _bound(20, 0.6, 0.0) + 1e-12


def test_a_constant_mu_has_no_gap():
    assert _max_one_step_gap(0, 0.1, 0.1) == 0.0


def test_singleton_raw_differs_from_trinity_by_the_eps_only():
    r = torch.tensor([1.0, 0.0, -0.1, 0.5])
    trinity = (r - 0.0) / (1.0 + 1e-6)  # mean 0, std 1 for a group of one, eps added
    ours = group_advantages(r, 1, singleton="raw")
    assert torch.equal(ours, r)
    assert torch.allclose(ours, trinity, rtol=2e-6, atol=0)
    assert not torch.equal(ours, trinity)


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_configs_name_their_conventions(path):
    text = path.read_text()
    head, _, algorithm = text.partition("\nalgorithm:")
    note = head.rsplit("\n\n", 1)[-1].split("\n")[-6:]
    note = " ".join(line for line in note if line.startswith("#"))
    for needle in ("Parity with Trinity-RFT", "mu(step) counts steps", "dual_clip", "k3"):
        assert needle in note, f"{path.name}: the note above algorithm: lacks {needle!r}"
    assert re.search(r"^  dual_clip: 3\.0", algorithm, re.M), "the note says dual_clip 3.0"
    assert re.search(r"^  logratio_clamp: 20\.0", algorithm, re.M), "the note says logratio_clamp 20"


def test_readme_states_the_computed_numbers():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Parity with Trinity-RFT", 1)[1].split("\n## ", 1)[0]
    assert f"{_max_one_step_gap(200, 0.9, 0.05):.4f}" in section
    assert f"{_max_one_step_gap(20, 0.6, 0.0):.3f}" in section
