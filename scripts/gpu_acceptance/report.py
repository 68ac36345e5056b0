"""What every acceptance step shares: its command line, named checks, and the result file.

A step is a script run as `python STEP.py --out DIR [--dry-run]`. It records named checks (each
with its numbers), catching each check's exception so that one failure does not hide the others,
and ends with DIR/<step>.json = {"status", "reason", "checks", "seconds"} and an exit code the
runner reads: 0 pass, 1 fail, 2 skip. --dry-run walks the same code on CPU at toy sizes, so that
CI keeps the step from rotting between the rare GPU runs.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import sys
import time
import traceback
from pathlib import Path

EXIT = {"pass": 0, "fail": 1, "skip": 2}
EXIT_GRACE_S = 15


class StepReport:
    def __init__(self, name: str, description: str):
        p = argparse.ArgumentParser(description=description)
        p.add_argument("--out", required=True, help="folder for <step>.json")
        p.add_argument("--dry-run", action="store_true", help="the same code on CPU at toy sizes")
        self.args = p.parse_args()
        self.name, self.dry_run = name, self.args.dry_run
        self.out = Path(self.args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.checks: dict = {}
        self.t0 = time.monotonic()

    def record(self, check: str, ok: bool, **numbers) -> None:
        self.checks[check] = {"ok": bool(ok), **numbers}
        print(f"  {'ok  ' if ok else 'FAIL'} {check} {json.dumps(numbers, default=str)[:300]}", flush=True)

    @contextlib.contextmanager
    def check(self, check: str):
        """Run a block as one check: an exception marks it failed, with the traceback's tail."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - one failing check must not hide the others
            tb = traceback.format_exc()
            print(tb, file=sys.stderr, flush=True)
            self.record(check, False, error=f"{type(e).__name__}: {e}"[:500], traceback=tb[-2000:])

    def finish(self, status: str | None = None, reason: str = "") -> None:
        if status is None:
            failed = [k for k, v in self.checks.items() if not v["ok"]]
            status = "fail" if failed else ("pass" if self.checks else "skip")
            reason = reason or (f"failed: {', '.join(failed)}" if failed else "")
        result = {
            "status": status,
            "reason": reason,
            "checks": self.checks,
            "seconds": round(time.monotonic() - self.t0, 2),
        }
        (self.out / f"{self.name}.json").write_text(json.dumps(result, indent=1, default=str))
        print(f"{self.name}: {status}{' - ' + reason if reason else ''}", flush=True)
        # A process that hangs on its way out (a thread or communicator that never ends) would
        # be killed at its budget with nothing said: dump every thread's stack, then exit.
        faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True)
        sys.exit(EXIT[status])

    def skip(self, reason: str) -> None:
        self.finish("skip", reason)
