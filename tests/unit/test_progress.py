"""Progress (metrics/progress.py): a tqdm bar on a terminal, plain periodic lines anywhere else."""

import io
import re

from chord_megatron.metrics.progress import ProgressBar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def run(stream, total=40, start=0, every_s=30.0):
    bar = ProgressBar(
        start, total, enabled=True, desc="base model", keys=(("loss", "loss"),), stream=stream, every_s=every_s
    )
    for step in range(start, total):
        bar.update({"loss": 1.0 / (step + 1)})
    bar.close()
    return stream.getvalue()


def test_off_a_terminal_progress_is_a_line_every_tenth_and_at_the_end():
    text = run(io.StringIO())
    assert "\r" not in text
    lines = text.splitlines()
    assert [re.match(r"base model: step (\d+)/40 \((\d+)%\)", line).groups() for line in lines] == [
        (str(4 * i), str(10 * i)) for i in range(1, 11)
    ]
    assert lines[-1].endswith(f"loss={1.0 / 40:.3g}") and " step/s, " in lines[-1]


def test_off_a_terminal_a_slow_stage_also_writes_every_few_seconds():
    lines = run(io.StringIO(), total=1000, every_s=0.0).splitlines()
    assert len(lines) == 1000  # every update is `every_s` later than the last line
    resumed = run(io.StringIO(), total=40, start=37).splitlines()
    assert [line.split(",")[0] for line in resumed] == ["base model: step 40/40 (100%)"]


def test_on_a_terminal_it_is_a_bar_redrawn_in_place():
    text = run(Terminal())
    assert "\r" in text and "base model" in text and "40/40" in text


def test_disabled_writes_nothing():
    stream = io.StringIO()
    bar = ProgressBar(0, 10, enabled=False, stream=stream)
    bar.update({"loss": 1.0})
    bar.close()
    assert stream.getvalue() == ""
