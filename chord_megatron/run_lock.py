"""The lock that keeps two `chord train` processes out of one output folder.

While a run trains, it holds an flock on its folder's .chord-train.lock (which names the holder's
pid and machine), so that a second `chord train` into the folder -- a compare run again while the
first still goes, say -- is refused rather than mixed into it. The kernel drops the lock when the
process ends, however it ends: a killed run leaves nothing to clean up. Where the filesystem has
no locks the run goes on unlocked; on a shared filesystem the lock holds across machines only as
far as that filesystem's flock does (tested on one machine only). The file stays after the run:
removing it could let two later runs lock two different files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Iterator

from .config import Config
from .run_dir import OutputDirError

LOCK_FILE = ".chord-train.lock"
_LOCK_HELD = "CHORD_OUTPUT_LOCK_HELD"  # the lock a parent process holds for its workers (--nproc)


def refuse_if_in_use(cfg: Config) -> None:
    """A folder that another `chord train` holds is refused, in one line (before the earlier-run
    check: "continue it with --resume" would be the wrong advice). Reads only: a refused run
    writes nothing."""
    path = Path(cfg.train.output_dir) / LOCK_FILE
    if os.environ.get(_LOCK_HELD) == str(path.resolve()):
        return  # our own parent's (--nproc)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file: no run has held the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(cfg, path) from None
    except OSError:
        pass  # a filesystem without locks
    finally:
        os.close(fd)


@contextlib.contextmanager
def output_dir_lock(cfg: Config) -> Iterator[None]:
    """Hold the folder's lock while this process trains into it (rank 0; under --nproc the parent,
    whose workers inherit the note that it is held)."""
    path = Path(cfg.train.output_dir) / LOCK_FILE
    if os.environ.get(_LOCK_HELD) == str(path.resolve()):
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
    previous = os.environ.get(_LOCK_HELD)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # taken since refuse_if_in_use looked
            raise _in_use(cfg, path) from None
        except OSError:
            pass  # a filesystem without locks: the run goes on unlocked
        else:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        os.environ[_LOCK_HELD] = str(path.resolve())
        yield
    finally:
        if previous is None:
            os.environ.pop(_LOCK_HELD, None)
        else:
            os.environ[_LOCK_HELD] = previous
        os.close(fd)  # drops the lock


def _in_use(cfg: Config, path: Path) -> OutputDirError:
    try:
        holder = json.loads(path.read_text())
        who = f"pid {holder['pid']} on {holder['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        who = "another process"
    return OutputDirError(
        f"{cfg.train.output_dir} is in use by a running chord train ({who}): wait for it to end, or stop it first"
    )
