"""Ctrl-C as a request to stop (stop.py): the first one only raises a flag the loop reads, the
second interrupts at once; the line names the step and the command that goes on from there."""

import os
import signal

import pytest

from chord_megatron.stop import StopOnCtrlC, resume_command, stopped


def test_first_ctrl_c_asks_the_loop_to_stop_the_second_interrupts(capsys):
    stop = StopOnCtrlC()
    with stop.armed():
        assert stop(1) is False and stop.at is None
        os.kill(os.getpid(), signal.SIGINT)
        assert stop(2) is True and stop.at == 2
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was
    assert "stopping after this step" in capsys.readouterr().err


def test_the_line_follows_what_the_checkpoint_root_holds(tmp_path):
    command = resume_command("my run.yaml", ["train.steps=5"], nproc=2, no_progress=True)
    assert command == "chord train 'my run.yaml' train.steps=5 --nproc 2 --no-progress --resume"
    root = tmp_path / "checkpoints"
    start_over = "chord train 'my run.yaml' train.steps=5 --nproc 2 --no-progress --overwrite"
    assert str(stopped(None, root, command)) == f"stopped before the first checkpoint; start again with: {start_over}"
    (root / "step_00000004").mkdir(parents=True)
    (root / "latest").write_text("step_00000004\n")
    # `latest` names a folder without a finished checkpoint in it: as good as none
    assert str(stopped(4, root, command)).startswith("stopped before the first checkpoint")
    (root / "step_00000004" / "metadata.json").write_text("{}")
    line = stopped(4, root, command)
    assert (line.one_line(), line.exit_code) == (f"stopped at step 4; continue with: {command}", 130)
    assert str(stopped(None, root, command)) == (
        f"stopped; the last checkpoint is step 4; continue from it with: {command}"
    )
