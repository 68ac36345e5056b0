"""The in-process engine in a child process of its own: generation beside training on a CPU.

With rollout.asynchronous the next step's rollouts are generated while the current step trains.
SGLang servers do that by nature; the in-process engine would share the trainer's Python
interpreter (and its lock) and mostly take turns with it. Here it runs in a spawned process
with its own torch threads, behind the same RolloutEngine verbs: each call is a message, and
weights travel through CPU buffers in shared memory. What it samples is what InProcessEngine samples in the same
thread count: a function of the weights, the prompts and the seed.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.multiprocessing  # noqa: F401  (registers the shared-memory pickling of tensors)

from ..types import Rollout
from .engine import RolloutEngine, RolloutError, SamplingParams


def _serve(conn, cfg, eos_token_id: Optional[int], threads: int) -> None:
    """The child: build the engine, then answer (method, args) messages until 'close'."""
    # Ctrl-C reaches the whole process group: the parent finishes its step and closes us (stop.py)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    from .inprocess import InProcessEngine

    engine = InProcessEngine.from_config(cfg, eos_token_id=eos_token_id)
    shared = []  # the parent's weight buffers, in shared memory (EngineProcess.update_weights)
    while True:
        try:
            method, args = conn.recv()
        except EOFError:  # the parent is gone
            return
        if method == "close":
            conn.send((True, None))
            return
        try:
            if method == "share_buffers":
                shared[:] = args[0]
                conn.send((True, None))
            elif method == "update_weights_from_buffers":
                conn.send((True, engine.update_weights(shared, *args)))
            else:
                conn.send((True, getattr(engine, method)(*args)))
        except Exception as e:  # the parent re-raises it, named
            conn.send((False, f"{type(e).__name__}: {e}"))


class EngineProcess(RolloutEngine):
    def __init__(self, cfg, *, eos_token_id: Optional[int] = None, threads: int = 1):
        ctx = mp.get_context("spawn")  # no fork of a process holding torch threads and process groups
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, cfg, eos_token_id, threads), daemon=True)
        self._proc.start()
        child.close()
        self._buffers: List[Tuple[str, torch.Tensor]] = []
        self._layout: Optional[list] = None

    def _call(self, method: str, *args):
        if not self._proc.is_alive():
            raise RolloutError(f"the rollout engine process (pid {self._proc.pid}) has exited")
        self._conn.send((method, args))
        try:
            ok, value = self._conn.recv()
        except EOFError:
            raise RolloutError(f"the rollout engine process (pid {self._proc.pid}) died during {method}") from None
        if not ok:
            raise RolloutError(f"rollout engine process, {method}: {value}")
        return value

    def generate(
        self, prompts: Sequence[Sequence[int]], samples_per_prompt: int, params: SamplingParams
    ) -> List[Rollout]:
        return self._call("generate", [list(p) for p in prompts], samples_per_prompt, params)

    def update_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]], version: str) -> None:
        """The first sync hands the child CPU buffers in shared memory; every sync copies the new
        tensors into them and sends only the version: a memcpy, not a pickle of the model."""
        named = [(n, t.detach()) for n, t in named_tensors]
        layout = [(n, tuple(t.shape), t.dtype) for n, t in named]
        if layout != self._layout:
            self._buffers = [(n, torch.empty(t.shape, dtype=t.dtype).share_memory_()) for n, t in named]
            self._call("share_buffers", self._buffers)  # travels as shared-memory handles
            self._layout = layout
        for (_, buf), (_, t) in zip(self._buffers, named):
            buf.copy_(t)
        self._call("update_weights_from_buffers", version)

    def health(self) -> bool:
        return self._proc.is_alive() and self._call("health")

    def weight_version(self) -> Optional[str]:
        return self._call("weight_version")

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._call("close")
            except RolloutError:
                pass
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
