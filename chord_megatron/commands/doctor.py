"""`chord doctor`: the trainer's, SGLang's and the router's Python side by side, checked before a
job starts anything (launch/common.sh runs it right after the plan).

Each interpreter answers `chord_megatron/versions.py`'s `versions()`, its source run there with
`python -c` (SGLang's environment needs nothing of this project). The table shows torch, CUDA,
NCCL, the driver, transformer-engine, megatron-core, sglang and sglang-router for each; every
problem is printed with the command that fixes it, and any problem ends the command with exit
status 2. The rules, and why:

  * NCCL: trainer rank 0 and every SGLang GPU form one communicator for the weight sync, and
    NCCL refuses a communicator whose ranks run different versions ("Mismatched NCCL version
    detected"), so the first broadcast would fail. The trainer's torch 2.13.0 brings
    nvidia-nccl-cu13 2.29.7 and SGLang 0.5.23's torch 2.14.1 brings 2.30.7. torch loads NCCL at
    run time from that wheel, so installing the newer wheel in the other environment fixes it
    (newer NCCL runs code built against an older one; the reverse can miss symbols).
  * the router: `python -m sglang_router.launch_router` runs in ROUTER_PYTHON (default: the
    trainer's Python, whose `gpu` extra installs sglang-router); `sglang[all]==0.5.23` does
    not install it, so SGLang's Python usually cannot run it.
  * SGLang's Python has sglang.
  * megatron-core is the pinned version (train/compat/cpu_patches.py), and transformer-engine,
    when installed, lies in the range megatron-core declares (>=2.9.0a0,<2.12.0 for 0.16.1) and
    its torch part imports (its top-level import hides that failure).
  * a CUDA 13 build of torch needs an R580+ driver (torch.cuda.is_available() is just False
    on an older one).

`--cpu` (CHORD_CPU=1 jobs) skips what needs CUDA: NCCL, the driver, transformer-engine.
`--trainer-only` (rollout.engine=inprocess) checks the trainer's Python alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import ChordError

ROUTER_REQUIREMENT = "sglang-router==0.3.2"  # as setup.py's gpu and test extras
SGLANG_REQUIREMENT = "sglang[all]==0.5.23"
# megatron-core -> the transformer-engine range it declares, for an installation whose metadata
# does not say (its own requirement lines win when present)
KNOWN_TE_RANGES = {"0.16.1": ">=2.9.0a0,<2.12.0"}
MIN_DRIVER = {12: 525, 13: 580}  # CUDA major of the torch build -> the oldest driver branch it runs on
QUERY_TIMEOUT_S = 300.0  # importing torch, megatron-core and transformer-engine on a cold file system


ROLE_NAMES = {"trainer": "the trainer's Python", "sglang": "SGLang's Python", "router": "the router's Python"}
WHERE_SET = {
    "trainer": "run chord from the trainer's environment, or --trainer-python",
    "sglang": "set SGLANG_PYTHON or --sglang-python to the Python of SGLang's environment",
    "router": "set ROUTER_PYTHON or --router-python to a Python with sglang-router",
}


class EnvironmentProblem(ChordError):
    exit_code, kind = 2, "doctor"


@dataclass(frozen=True)
class Problem:
    what: str
    fix: str


# ----------------------------------------------------------------------------------------------
# Asking an interpreter
# ----------------------------------------------------------------------------------------------
def query_source(import_checks: Sequence[str]) -> str:
    """versions.py's source plus a line printing its answer as JSON (the last line of stdout)."""
    from .. import versions

    call = f"versions(import_checks={tuple(import_checks)!r})"
    return Path(versions.__file__).read_text() + f"\nimport json as _json\nprint(_json.dumps({call}))\n"


def query(
    python: Sequence[str],
    *,
    import_checks: Sequence[str] = ("transformer_engine.pytorch",),
    timeout_s: float = QUERY_TIMEOUT_S,
) -> dict:
    """`versions()` as `python` sees it (trying only `import_checks`: megatron.core and apex
    take seconds and the rules below do not need them); raises EnvironmentProblem naming the
    interpreter when it cannot be run or gives no answer."""
    name = shlex.join(python)
    try:
        out = subprocess.run(
            [*python, "-c", query_source(import_checks)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise EnvironmentProblem(f"{name}: no such program") from None
    except PermissionError:
        raise EnvironmentProblem(f"{name}: not executable") from None
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(f"{name}: no answer after {timeout_s:g} s") from None
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise EnvironmentProblem(f"{name}: exited with status {out.returncode} ({tail})")
    try:
        answer = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise EnvironmentProblem(f"{name}: did not answer the version query (last line: {lines[-1][:120]!r})") from None
    if not isinstance(answer, dict):
        raise EnvironmentProblem(f"{name}: did not answer the version query")
    return answer


# ----------------------------------------------------------------------------------------------
# The rules (pure: answers in, problems out)
# ----------------------------------------------------------------------------------------------
def _pkg(v: dict, name: str) -> Optional[str]:
    return (v.get("packages") or {}).get(name)


def nccl_version(v: dict) -> Optional[str]:
    """The NCCL torch loads (its own report), else the nvidia-nccl wheel's version."""
    reported = v.get("nccl")
    if reported and re.fullmatch(r"\d+(\.\d+)+", str(reported)):
        return str(reported)
    return _pkg(v, "nvidia-nccl-cu13") or _pkg(v, "nvidia-nccl-cu12")


def _nccl_wheel(v: dict) -> str:
    for name in ("nvidia-nccl-cu13", "nvidia-nccl-cu12"):
        if _pkg(v, name):
            return name
    major = str(v.get("torch_cuda") or "13").split(".")[0]
    return f"nvidia-nccl-cu{major}"


def _version_key(version: str):
    return tuple(int(x) for x in re.findall(r"\d+", version))


def driver_version(v: dict) -> Optional[str]:
    for line in v.get("nvidia_smi") or []:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) > 1 and re.match(r"\d+", parts[1]):
            return parts[1]
    return None


def te_range(trainer: dict) -> Optional[str]:
    """The transformer-engine range the trainer's megatron-core declares (or is known to)."""
    for line in trainer.get("megatron_core_requires") or []:
        m = re.match(r"\s*transformer[-_]engine\s*(\[[^\]]*\])?\s*([^;]+)", line, re.I)
        if m and m.group(2).strip():
            return ",".join(sorted(s.strip() for s in m.group(2).split(",")))
    return KNOWN_TE_RANGES.get(_pkg(trainer, "megatron-core") or "")


def _in_range(version: str, spec: str) -> bool:
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        return SpecifierSet(spec).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def check(
    answers: Dict[str, dict],
    pythons: Dict[str, str],
    *,
    cpu: bool,
    pinned_megatron: str,
    allow_unpinned: bool = False,
) -> List[Problem]:
    """Problems of the environments in `answers` ("trainer", and "sglang" and "router" unless
    trainer-only); `pythons` holds each one's command as the user would type it."""
    problems: List[Problem] = []
    t = answers["trainer"]
    pip_t = f"{pythons['trainer']} -m pip install"

    # -- the trainer's own stack ---------------------------------------------------------------
    mc = _pkg(t, "megatron-core")
    if mc is None:
        problems.append(Problem("megatron-core is not installed in the trainer's Python", f"{pip_t} -e ."))
    elif mc != pinned_megatron and not allow_unpinned:
        problems.append(
            Problem(
                f"megatron-core {mc} in the trainer's Python: this project's workarounds are tested against "
                f"{pinned_megatron}",
                f"{pip_t} megatron-core=={pinned_megatron}  (or CHORD_ALLOW_UNPINNED_MEGATRON=1 to try anyway)",
            )
        )
    if not cpu:
        if not t.get("torch_cuda"):
            problems.append(
                Problem(
                    f"the trainer's torch {_pkg(t, 'torch')} is not a CUDA build",
                    "install a CUDA build of torch (or an NGC PyTorch container), or run with CHORD_CPU=1",
                )
            )
        te = _pkg(t, "transformer-engine")
        spec = te_range(t)
        if te and spec and not _in_range(te, spec):
            problems.append(
                Problem(
                    f"transformer-engine {te} is outside the range megatron-core {mc} declares ({spec})",
                    f'{pip_t} "transformer-engine[pytorch]{spec}"  (or an NGC container whose transformer-engine is in range)',
                )
            )
        te_error = (t.get("import_errors") or {}).get("transformer_engine.pytorch")
        if te and te_error:
            problems.append(
                Problem(
                    f"transformer-engine {te} is installed but transformer_engine.pytorch does not import ({te_error})",
                    "reinstall transformer-engine built against this torch (NGC containers ship a matching pair)",
                )
            )
        driver, cuda = driver_version(t), t.get("torch_cuda")
        if driver and cuda:
            need = MIN_DRIVER.get(int(str(cuda).split(".")[0]))
            if need and _version_key(driver)[0] < need:
                problems.append(
                    Problem(
                        f"driver {driver} is too old for the trainer's CUDA {cuda} build of torch (needs R{need}+)",
                        f"a node with driver R{need} or newer, or a torch built for an older CUDA",
                    )
                )

    if "sglang" not in answers:
        return problems

    # -- SGLang's Python -------------------------------------------------------------------------
    s = answers["sglang"]
    if not (s.get("modules") or {}).get("sglang"):
        problems.append(
            Problem(
                f"SGLang's Python ({pythons['sglang']}) has no sglang",
                f'{pythons["sglang"]} -m pip install "{SGLANG_REQUIREMENT}"  (or set SGLANG_PYTHON / --sglang-python '
                f"to the Python that has it)",
            )
        )
    if not cpu:
        nt, ns = nccl_version(t), nccl_version(s)
        if nt is None or ns is None:
            missing = "the trainer's" if nt is None else "SGLang's"
            problems.append(
                Problem(
                    f"{missing} torch reports no NCCL version: the weight sync's NCCL versions cannot be compared",
                    "install CUDA builds of torch in both environments",
                )
            )
        elif nt != ns:
            older, newer, version = (
                ("trainer", "sglang", ns) if _version_key(nt) < _version_key(ns) else ("sglang", "trainer", nt)
            )
            wheel = _nccl_wheel(answers[newer])
            problems.append(
                Problem(
                    f"NCCL {nt} (trainer) != {ns} (SGLang): NCCL refuses a communicator whose ranks run different "
                    f"versions, so the first weight-sync broadcast fails",
                    f"{pythons[older]} -m pip install {wheel}=={version}  (the newer NCCL in the {older}'s "
                    f"environment; pip warns that its torch pins another version: expected, torch loads NCCL at run time)",
                )
            )

    # -- the router's Python -------------------------------------------------------------------
    r = answers["router"]
    if not (r.get("modules") or {}).get("sglang_router"):
        problems.append(
            Problem(
                f"the router's Python ({pythons['router']}) has no sglang_router (sglang[all] does not install it)",
                f"{pythons['router']} -m pip install {ROUTER_REQUIREMENT}  (or set ROUTER_PYTHON / --router-python "
                f"to a Python that has it)",
            )
        )
    return problems


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------
ROWS = (
    ("python", lambda v: v.get("python")),
    ("torch", lambda v: _pkg(v, "torch")),
    ("CUDA (torch build)", lambda v: v.get("torch_cuda")),
    ("CUDA available", lambda v: v.get("cuda_available")),
    ("NCCL", nccl_version),
    ("driver", driver_version),
    ("transformer-engine", lambda v: _pkg(v, "transformer-engine")),
    ("megatron-core", lambda v: _pkg(v, "megatron-core")),
    ("sglang", lambda v: _pkg(v, "sglang")),
    ("sglang-router", lambda v: _pkg(v, "sglang-router")),
)


def format_table(answers: Dict[str, dict], pythons: Dict[str, str]) -> str:
    roles = list(answers)
    header = ["", *(f"{role}: {pythons[role]}" for role in roles)]
    rows = [header] + [
        [label, *("-" if (x := get(answers[role])) is None else str(x) for role in roles)] for label, get in ROWS
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows) + "\n"


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------
def doctor(
    *,
    trainer_python: Sequence[str],
    sglang_python: Optional[Sequence[str]],
    router_python: Optional[Sequence[str]],
    cpu: bool,
    out=None,
) -> None:
    """Print the table and the problems; raise EnvironmentProblem when there is any.
    `sglang_python` None: the trainer alone (no SGLang in this job)."""
    from ..train.compat.cpu_patches import ALLOW_UNPINNED_ENV, PINNED_MEGATRON_CORE

    out = out or sys.stdout
    commands = {"trainer": list(trainer_python)}
    if sglang_python is not None:
        commands["sglang"] = list(sglang_python)
        commands["router"] = list(router_python or trainer_python)
    pythons = {role: shlex.join(cmd) for role, cmd in commands.items()}
    answers: Dict[str, dict] = {}
    seen: Dict[str, dict] = {}  # one query per distinct interpreter
    for role, cmd in commands.items():
        key = pythons[role]
        if key not in seen:
            try:
                seen[key] = query(cmd, import_checks=() if cpu else ("transformer_engine.pytorch",))
            except EnvironmentProblem as e:
                raise EnvironmentProblem(f"{ROLE_NAMES[role]}: {e} ({WHERE_SET[role]})") from None
        answers[role] = seen[key]
    out.write(format_table(answers, pythons))
    problems = check(
        answers,
        pythons,
        cpu=cpu,
        pinned_megatron=PINNED_MEGATRON_CORE,
        allow_unpinned=os.environ.get(ALLOW_UNPINNED_ENV) == "1",
    )
    if cpu:
        out.write("CPU run: NCCL, driver and transformer-engine not checked\n")
    for p in problems:
        out.write(f"problem: {p.what}\n  fix: {p.fix}\n")
    out.flush()
    if problems:
        raise EnvironmentProblem(
            f"{len(problems)} problem(s) in the environments (listed above with their fixes); the first: {problems[0].what}"
        )
    out.write("doctor: the environments fit together\n")


def _python(flag_value: Optional[str], env_name: str) -> Optional[List[str]]:
    value = flag_value if flag_value is not None else os.environ.get(env_name)
    if value is None or not value.strip():
        return None
    return shlex.split(value)


def run(args: argparse.Namespace) -> int:
    trainer = shlex.split(args.trainer_python) if args.trainer_python else [sys.executable]
    sglang = None
    if not args.trainer_only:
        sglang = _python(args.sglang_python, "SGLANG_PYTHON")
        if sglang is None:
            raise EnvironmentProblem(
                "no SGLang Python given: pass --sglang-python PATH or set SGLANG_PYTHON "
                "(or --trainer-only for rollout.engine=inprocess)"
            )
    router = _python(args.router_python, "ROUTER_PYTHON")
    doctor(trainer_python=trainer, sglang_python=sglang, router_python=router, cpu=args.cpu)
    return 0
