"""Another process that holds a run folder's lock, as a training `chord train` does (run_dir.py)."""

import contextlib
import subprocess
import sys

from chord_megatron.run_lock import LOCK_FILE

HOLD = """
import fcntl, json, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
print("locked", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def holding(folder):
    """Yields the process, once it holds `folder`'s lock; kills it at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder / LOCK_FILE)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"locked\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()
