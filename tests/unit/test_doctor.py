"""`chord doctor` against stand-in interpreters: small scripts that act as a Python answering the
version query with versions chosen here (the trainer's torch 2.13.0 / NCCL 2.29.7 and SGLang
0.5.23's torch 2.14.1 / NCCL 2.30.7 are the case the issue describes), and once against this
Python itself."""

import json
import platform
import re
import shlex
import stat
import sys
from pathlib import Path

import pytest

from chord_megatron.cli import main
from chord_megatron.commands import doctor as dr

ROOT = Path(__file__).resolve().parents[2]


def answer(*, torch="2.13.0+cu130", nccl="2.29.7", te="2.10.0", megatron="0.16.1", sglang=None, router=None, **extra):
    """What versions() says in an environment (only the keys the doctor reads)."""
    v = {
        "python": "3.12.3",
        "packages": {
            "torch": torch,
            "megatron-core": megatron,
            "transformer-engine": te,
            "sglang": sglang,
            "sglang-router": router,
            "nvidia-nccl-cu13": nccl,
        },
        "megatron_core_requires": (
            ['transformer-engine[core_cu13,pytorch]<2.12.0,>=2.9.0a0; extra == "dev"'] if megatron else []
        ),
        "modules": {"sglang": sglang is not None, "sglang_router": router is not None},
        "import_errors": {"transformer_engine.pytorch": None},
        "torch_cuda": "13.0",
        "cuda_available": True,
        "nccl": nccl,
        "nvidia_smi": ["NVIDIA H100 80GB HBM3, 580.65.06, 81559 MiB, 1980 MHz"],
    }
    v.update(extra)
    return v


TRAINER = answer(router="0.3.2")  # the gpu extra brings sglang-router
SGLANG = answer(torch="2.14.1+cu130", nccl="2.30.7", te=None, megatron=None, sglang="0.5.23")


def fake_python(tmp_path: Path, name: str, versions: dict) -> str:
    """An executable that answers any command line with `versions` as JSON (after some noise,
    as a site's Python may print) and records its arguments next to itself."""
    path = tmp_path / name
    path.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > "{path}.args"\n'
        "echo 'a line a sitecustomize printed'\n"
        f"cat <<'EOF'\n{json.dumps(versions)}\nEOF\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def doctor(capsys, *args):
    rc = main(["doctor", *map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_matching_environments_pass_and_show_every_version(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ROUTER_PYTHON", raising=False)
    trainer = fake_python(tmp_path, "trainer-python", TRAINER)
    sglang = fake_python(tmp_path, "sglang-python", dict(SGLANG, nccl="2.29.7"))
    rc, out, err = doctor(capsys, "--trainer-python", trainer, "--sglang-python", sglang)
    assert (rc, err) == (0, ""), out + err
    rows = {line.split("  ")[0]: line.split() for line in out.splitlines()}
    # the router defaults to the trainer's Python: three columns, two interpreters asked
    assert rows["torch"][1:] == ["2.13.0+cu130", "2.14.1+cu130", "2.13.0+cu130"]
    assert rows["NCCL"][1:] == ["2.29.7"] * 3
    assert rows["driver"][1:] == ["580.65.06"] * 3
    assert rows["transformer-engine"][1:] == ["2.10.0", "-", "2.10.0"]
    assert rows["sglang-router"][1:] == ["0.3.2", "-", "0.3.2"]
    assert out.rstrip().endswith("doctor: the environments fit together")
    # each interpreter ran versions.py's own source with -c
    argv = Path(trainer + ".args").read_text()
    assert (
        argv.startswith("-c\n")
        and "def versions(" in argv
        and "print(_json.dumps(versions(import_checks=('transformer_engine.pytorch',))))" in argv
    )


def test_nccl_mismatch_is_refused_with_the_pip_command(tmp_path, capsys):
    trainer = fake_python(tmp_path, "trainer-python", TRAINER)
    sglang = fake_python(tmp_path, "sglang-python", SGLANG)
    rc, out, err = doctor(capsys, "--trainer-python", trainer, "--sglang-python", sglang)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("chord: doctor: 1 problem(s)") and "NCCL 2.29.7 (trainer)" in err
    assert "problem: NCCL 2.29.7 (trainer) != 2.30.7 (SGLang)" in out
    # the older side gets the newer wheel, by its exact name and version
    assert f"  fix: {trainer} -m pip install nvidia-nccl-cu13==2.30.7  (the newer NCCL in the trainer's" in out


def test_nccl_mismatch_the_other_way_round_fixes_sglangs_side(tmp_path, capsys):
    trainer = fake_python(tmp_path, "trainer-python", dict(TRAINER, nccl="2.31.1"))
    sglang = fake_python(tmp_path, "sglang-python", SGLANG)
    rc, out, _ = doctor(capsys, "--trainer-python", trainer, "--sglang-python", sglang)
    assert rc == 2 and f"fix: {sglang} -m pip install nvidia-nccl-cu13==2.31.1" in out


def test_missing_sglang_python_is_one_line_naming_it(tmp_path, capsys):
    trainer = fake_python(tmp_path, "trainer-python", TRAINER)
    missing = tmp_path / "envs" / "sglang" / "bin" / "python"
    rc, out, err = doctor(capsys, "--trainer-python", trainer, "--sglang-python", missing)
    assert rc == 2 and out == ""
    assert err == (
        f"chord: doctor: SGLang's Python: {missing}: no such program (set SGLANG_PYTHON or --sglang-python "
        "to the Python of SGLang's environment)\n"
    )


def test_sglang_python_comes_from_the_environment_and_is_required(tmp_path, capsys, monkeypatch):
    trainer = fake_python(tmp_path, "trainer-python", TRAINER)
    monkeypatch.delenv("SGLANG_PYTHON", raising=False)
    rc, _, err = doctor(capsys, "--trainer-python", trainer)
    assert rc == 2 and "no SGLang Python given: pass --sglang-python PATH or set SGLANG_PYTHON" in err
    # a command with arguments, as a container wrapper would be
    wrapper = fake_python(tmp_path, "sglang-python", SGLANG)
    monkeypatch.setenv("SGLANG_PYTHON", f"{wrapper} -X utf8")
    rc, out, _ = doctor(capsys, "--trainer-python", trainer)
    assert rc == 2 and f"sglang: {wrapper} -X utf8" in out and "!= 2.30.7 (SGLang)" in out
    assert Path(wrapper + ".args").read_text().startswith("-X\nutf8\n-c\n")
    rc, out, _ = doctor(capsys, "--trainer-python", trainer, "--trainer-only")
    assert rc == 0 and "sglang:" not in out.splitlines()[0]


def test_a_router_python_without_sglang_router_is_refused(tmp_path, capsys, monkeypatch):
    trainer = fake_python(tmp_path, "trainer-python", answer(router=None))  # no gpu extra
    sglang = fake_python(tmp_path, "sglang-python", dict(SGLANG, nccl="2.29.7"))
    monkeypatch.delenv("ROUTER_PYTHON", raising=False)
    rc, out, _ = doctor(capsys, "--trainer-python", trainer, "--sglang-python", sglang)
    assert rc == 2 and f"fix: {trainer} -m pip install sglang-router==0.3.2" in out
    # SGLang's own Python, as sglang[all]==0.5.23 installs it, cannot run the router either
    monkeypatch.setenv("ROUTER_PYTHON", sglang)
    rc, out, _ = doctor(capsys, "--trainer-python", trainer, "--sglang-python", sglang)
    assert rc == 2 and f"the router's Python ({sglang}) has no sglang_router" in out
    router = fake_python(tmp_path, "router-python", answer(te=None, megatron=None, router="0.3.2"))
    rc, out, _ = doctor(capsys, "--trainer-python", trainer, "--sglang-python", sglang, "--router-python", router)
    assert rc == 0, out


def test_the_router_pin_is_the_one_setup_py_installs():
    assert f'"{dr.ROUTER_REQUIREMENT}"' in (ROOT / "setup.py").read_text()


@pytest.mark.parametrize(
    "trainer,reason",
    [
        (answer(te="2.12.0", router="0.3.2"), "transformer-engine 2.12.0 is outside the range megatron-core 0.16.1"),
        (answer(te="2.8.0", router="0.3.2"), "(<2.12.0,>=2.9.0a0)"),
        (
            answer(te="2.10.0", router="0.3.2", import_errors={"transformer_engine.pytorch": "ImportError: libcudnn"}),
            "transformer_engine.pytorch does not import (ImportError: libcudnn)",
        ),
        (
            answer(router="0.3.2", nvidia_smi=["NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB, 1980 MHz"]),
            "driver 550.54.15 is too old for the trainer's CUDA 13.0 build of torch (needs R580+)",
        ),
        (answer(megatron="0.17.0", router="0.3.2"), "megatron-core 0.17.0 in the trainer's Python"),
        (answer(torch="2.13.0+cpu", router="0.3.2", torch_cuda=None), "is not a CUDA build"),
    ],
    ids=["te-too-new", "te-too-old", "te-broken", "old-driver", "megatron", "cpu-torch"],
)
def test_trainer_stack_problems(tmp_path, capsys, trainer, reason):
    t = fake_python(tmp_path, "trainer-python", trainer)
    s = fake_python(tmp_path, "sglang-python", dict(SGLANG, nccl="2.29.7"))
    rc, out, err = doctor(capsys, "--trainer-python", t, "--sglang-python", s)
    assert rc == 2 and reason in out and err.count("\n") == 1, out


def test_the_te_range_falls_back_to_the_known_one_without_metadata():
    assert dr.te_range(dict(answer(), megatron_core_requires=[])) == ">=2.9.0a0,<2.12.0"
    assert dr.te_range(dict(answer(), megatron_core_requires=["transformer_engine>=3.0"])) == ">=3.0"
    assert dr.te_range(dict(answer(megatron="0.99.0"), megatron_core_requires=[])) is None


def test_cpu_runs_skip_nccl_and_the_gpu_stack(tmp_path, capsys):
    cpu = dict(torch_cuda=None, cuda_available=False, nvidia_smi=None)
    t = answer(torch="2.13.0+cpu", nccl=None, te=None, router="0.3.2", **cpu)
    s = answer(torch="2.14.1+cpu", nccl=None, te=None, megatron=None, sglang="0.5.23", **cpu)
    for v in (t, s):  # what a CPU build says (torch.cuda.nccl.version() raises)
        v["nccl"] = "unknown (AttributeError)"
    trainer = fake_python(tmp_path, "trainer-python", t)
    sglang = fake_python(tmp_path, "sglang-python", s)
    rc, out, _ = doctor(capsys, "--trainer-python", trainer, "--sglang-python", sglang, "--cpu")
    assert rc == 0 and "CPU run: NCCL, driver and transformer-engine not checked" in out, out
    rc, out, _ = doctor(capsys, "--trainer-python", trainer, "--sglang-python", sglang)
    assert rc == 2 and "not a CUDA build" in out and "reports no NCCL version" in out


def test_an_interpreter_that_fails_or_says_nothing_useful(tmp_path, capsys):
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'error: libpython3.12.so.1.0: cannot open shared object file' >&2\nexit 127\n")
    broken.chmod(0o755)
    rc, _, err = doctor(capsys, "--trainer-python", broken, "--trainer-only")
    assert rc == 2 and err == (
        f"chord: doctor: the trainer's Python: {broken}: exited with status 127 (error: libpython3.12.so.1.0: "
        "cannot open shared object file) (run chord from the trainer's environment, or --trainer-python)\n"
    )
    chatty = tmp_path / "chatty-python"
    chatty.write_text("#!/bin/sh\necho hello\n")
    chatty.chmod(0o755)
    rc, _, err = doctor(capsys, "--trainer-python", chatty, "--trainer-only")
    assert rc == 2 and "did not answer the version query (last line: 'hello')" in err


def test_versions_of_this_python_through_the_real_query():
    v = dr.query([sys.executable])
    assert v["python"] == platform.python_version() and v["executable"] == sys.executable
    import torch

    assert v["packages"]["torch"] == torch.__version__
    assert v["torch_cuda"] == torch.version.cuda
    assert v["modules"]["sglang_router"] is True  # the test extra installs it
    assert any(re.match(r"transformer[-_]engine", r) for r in v["megatron_core_requires"])
    assert shlex.split(shlex.join([sys.executable]))[0] == sys.executable
