"""Stand-ins for the `chord train` processes that `chord compare` starts (subprocess.Popen).

`started(train)`: each process runs `train(cmd) -> exit status` (a function that writes the
metrics a run would) when it is started, and has ended by the first poll.
`Timed`: processes that end after a number of polls, so that several run at once, and that
cache their run's base model on their first poll, as a trainer does after its base stage.
"""

import pathlib


def started(train):
    class Process:
        def __init__(self, cmd, **_):
            self.args, self.returncode = cmd, train(cmd)

        def poll(self):
            return self.returncode

        def wait(self):
            return self.returncode

    return Process


class Timed:
    def __init__(self, polls, train, base_of):
        """polls(cmd): how many polls the run lasts; train(cmd): writes its metrics and returns its
        exit status when it ends; base_of(cmd): its base model's cache file, or None."""
        self.polls, self.train, self.base_of = polls, train, base_of
        self.running, self.events = [], []  # events: ("start" | "end", cmd, processes running then)

    def __call__(self, cmd, **_):
        owner = self

        class Process:
            def __init__(self):
                self.args, self.left, self.returncode = cmd, owner.polls(cmd), None
                owner.running.append(self)
                owner.events.append(("start", cmd, len(owner.running)))

            def poll(self):
                if self.returncode is None:
                    base = owner.base_of(cmd)
                    if base is not None and not base.exists():  # the base stage comes first
                        pathlib.Path(base).parent.mkdir(parents=True, exist_ok=True)
                        pathlib.Path(base).write_text("base")
                    self.left -= 1
                    if self.left <= 0:
                        self.returncode = owner.train(cmd)
                        owner.running.remove(self)
                        owner.events.append(("end", cmd, len(owner.running)))
                return self.returncode

            def wait(self):
                while self.poll() is None:
                    pass
                return self.returncode

        return Process()
