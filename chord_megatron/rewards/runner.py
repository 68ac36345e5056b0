"""Scoring samples in worker processes, with a timeout per sample.

Rewards run in a process pool because user code can hang (a regex on a pathological answer, a
sandboxed tool) or crash; each sample gets `timeout_s`. A reward that raises, times out, or
returns something that is not a finite number stops the step with a RewardError naming the
function and the sample: a silently dropped or NaN reward would corrupt every advantage of its
group. The pool is started with "spawn" so workers never inherit the trainer's threads or
CUDA state.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import numbers
import signal
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

from .registry import RewardError, RewardFn, get_reward

_GRACE_S = 2.0  # the parent's wait beyond timeout_s before it gives up on a worker


class _Timeout(BaseException):
    """Raised in a worker by its alarm; a BaseException so `except Exception` in user code
    does not swallow it."""


def _on_alarm(signum, frame):
    raise _Timeout()


def _call(fn: RewardFn, prompt: str, response: str, metadata: Dict[str, Any], timeout_s: float):
    """Runs in a worker and never raises, so the parent can tell a failure from a pool problem.
    The alarm stops Python-level hangs exactly at timeout_s; the parent's own wait is the
    backstop for code that never returns to the interpreter (C extensions)."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return "ok", fn(prompt, response, metadata)
    except _Timeout:
        return "timeout", None
    except BaseException as e:  # noqa: BLE001 - reported to the parent with its type
        return "raised", f"{type(e).__name__}: {e}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _call_chunk(fn: RewardFn, samples: List[tuple], timeout_s: float) -> List[tuple]:
    """_call on consecutive samples in one worker task, up to the first that fails: one message
    each way per chunk instead of per sample (with rewards as cheap as a string comparison, the
    messages were most of the time)."""
    out = []
    for prompt, response, metadata in samples:
        out.append(_call(fn, prompt, response, metadata, timeout_s))
        if out[-1][0] != "ok":
            break
    return out


def _ignore_ctrl_c() -> None:
    """A worker's initializer: a Ctrl-C at the terminal reaches the whole process group, and the
    trainer decides what it means (stop.py); a worker would report it as the reward failing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def check_reward_value(name: str, index: int, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RewardError(name, index, f"returned {value!r} ({type(value).__name__}), expected a number")
    value = float(value)
    if not math.isfinite(value):
        raise RewardError(name, index, f"returned {value}, expected a finite number")
    return value


@dataclass
class RewardRunner:
    """Scores samples with one reward function in `num_workers` processes.

    Use as a context manager, or call close(): the pool is kept between calls (starting spawned
    workers costs ~0.1 s each) and rebuilt after a timeout, whose worker is killed."""

    reward: str | RewardFn
    num_workers: int = 2
    timeout_s: float = 10.0
    start_method: str = "spawn"

    def __post_init__(self):
        self.fn: RewardFn = get_reward(self.reward) if isinstance(self.reward, str) else self.reward
        self.name = self.reward if isinstance(self.reward, str) else getattr(self.fn, "__name__", repr(self.fn))
        self._pool = None

    def _get_pool(self):
        if self._pool is None:
            self._pool = mp.get_context(self.start_method).Pool(self.num_workers, initializer=_ignore_ctrl_c)
        return self._pool

    def __call__(
        self, prompts: Sequence[str], responses: Sequence[str], metadata: Sequence[Dict[str, Any]]
    ) -> List[float]:
        if not (len(prompts) == len(responses) == len(metadata)):
            raise ValueError(
                f"prompts, responses and metadata differ in length: {len(prompts)}, {len(responses)}, {len(metadata)}"
            )
        pool = self._get_pool()
        samples = list(zip(prompts, responses, metadata))
        size = max(1, math.ceil(len(samples) / self.num_workers))
        starts = range(0, len(samples), size)
        pending = [pool.apply_async(_call_chunk, (self.fn, samples[i : i + size], self.timeout_s)) for i in starts]
        rewards: List[float] = []
        try:
            for start, res in zip(starts, pending):
                n = min(size, len(samples) - start)
                # Chunks are awaited in order and the pool starts tasks in order, so chunk k is
                # running by the time its wait starts: the wait bounds its run time (each sample
                # in it has its own alarm; this is the backstop for code that never returns).
                try:
                    results = res.get(self.timeout_s * n + _GRACE_S)
                except mp.TimeoutError:
                    raise RewardError(self.name, start, f"timed out after {self.timeout_s:g}s") from None
                except Exception as e:  # the function or its result could not be pickled
                    raise RewardError(self.name, start, f"{type(e).__name__}: {e}") from None
                for j, (status, value) in enumerate(results):
                    i = start + j
                    if status == "timeout":
                        raise RewardError(self.name, i, f"timed out after {self.timeout_s:g}s")
                    if status == "raised":
                        raise RewardError(self.name, i, f"raised {value}")
                    rewards.append(check_reward_value(self.name, i, value))
        except RewardError:
            # Workers may still be busy (or hung) on this batch: do not reuse them.
            self.close(kill=True)
            raise
        return rewards

    def close(self, kill: bool = False) -> None:
        if self._pool is not None:
            if kill:
                self._pool.terminate()
            else:
                self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(kill=exc[0] is not None)
