"""The one root of the errors `chord` reports as a single line, with their exit codes.

A ChordError is a problem the user can act on -- a config key, a data row, an impossible
layout, a checkpoint folder, a rollout server or reward that failed -- and `cli.main` prints
`chord: <kind>: <message>` and exits with `exit_code` (2: the input is wrong, fix it and rerun;
1: the run stopped, metrics and checkpoints so far stay and `--resume` continues). Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Optional


class ChordError(Exception):
    exit_code = 1
    kind: Optional[str] = None  # the line's prefix; None: the class name

    def one_line(self) -> str:
        return f"{self.kind or type(self).__name__}: {self}"
