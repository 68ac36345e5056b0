"""train.device: a GPU job on a node where torch sees no GPU stops at once with the reason,
instead of training on the CPU over gloo in fp32; `auto` (the demo's default) keeps the CPU path.

The suite hides the GPU (conftest.py: CUDA_VISIBLE_DEVICES=""), so torch sees none here."""

from pathlib import Path

import pytest
import torch

from chord_megatron.cli import main
from chord_megatron.config import ConfigError, load_config
from chord_megatron.train import parallel
from chord_megatron.train.parallel import DeviceError, require_device, why_no_cuda

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs/demo.yaml")


def test_chord_train_with_device_cuda_stops_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", DEMO, "train.device=cuda", f"train.output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("chord: device error: train.device=cuda, but torch sees no CUDA GPU on ")
    # CI's CPU build of torch, or a CUDA build with the GPU hidden by this suite: either way the reason
    assert err[0].endswith(f": {why_no_cuda()}; set train.device=auto to run on the CPU instead")
    assert "CPU-only build" in err[0] or "CUDA_VISIBLE_DEVICES is empty" in err[0]
    assert not out.exists()  # no task data, no base model, no engine: it stopped first


def test_auto_is_the_default_and_passes_without_a_gpu():
    assert load_config(DEMO).train.device == "auto"
    assert not torch.cuda.is_available()
    require_device("auto")  # no error: the CPU demo runs


def test_the_paper_configs_ask_for_cuda():
    papers = sorted((ROOT / "configs" / "paper").glob("*.yaml"))
    assert papers and {load_config(p).train.device for p in papers} == {"cuda"}
    with pytest.raises(DeviceError):
        require_device(load_config(papers[0]).train.device)


def test_device_is_one_of_auto_and_cuda(capsys):
    assert main(["config", "show", DEMO, "train.device=gpu"]) == 2
    assert capsys.readouterr().err.strip() == (
        "chord: config error: command line: train.device: must be one of auto, cuda, got 'gpu'"
    )


def test_the_reason_names_a_cpu_only_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert why_no_cuda() == f"torch {torch.__version__} is a CPU-only build (install a CUDA build of torch)"


def test_the_reason_names_hidden_gpus(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", " ")
    assert why_no_cuda() == "CUDA_VISIBLE_DEVICES is empty (hides every GPU)"


def test_the_reason_carries_cudas_own_words_and_the_driver(monkeypatch):
    # What torch 2.13's CUDA 13 wheels say on a node with an R550 driver.
    def too_old():
        raise RuntimeError("The NVIDIA driver on your system is too old (found version 12040).\nPlease update it.")

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "init", too_old)
    monkeypatch.setattr(parallel, "nvidia_driver_version", lambda: "550.54.15")
    assert why_no_cuda() == (
        "The NVIDIA driver on your system is too old (found version 12040). "
        f"(torch {torch.__version__} is built for CUDA 13.0; NVIDIA driver: 550.54.15; "
        "CUDA 13 builds need driver R580 or newer)"
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"too old .* set train.device=auto") as e:
        require_device("cuda")
    assert e.value.exit_code == 2 and "\n" not in str(e.value)


def test_cpu_threads_sets_torchs_intra_op_threads_and_zero_leaves_them():
    from chord_megatron.train.parallel import set_cpu_threads

    before = torch.get_num_threads()
    try:
        set_cpu_threads(0)
        assert torch.get_num_threads() == before
        set_cpu_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="train.cpu_threads"):
        load_config(None, ["train.cpu_threads=-1"])
