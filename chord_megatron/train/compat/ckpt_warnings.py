"""The FutureWarnings every dist-checkpointing load prints with megatron-core 0.16.1 on torch 2.13.

megatron-core's torch strategy still calls torch's deprecated `checkpoint.load_state_dict`, and
torch's load planner warns that ShardedTensor (which megatron-core's checkpoints are made of) is
deprecated. Neither is something a user of a checkpoint can act on, and they would print three
warnings on every `--resume`, `chord eval --checkpoint` and `chord export-hf`. They are silenced
around our load only, and by exact message; a release that drops them fails
tests/unit/test_compat_pins.py, and this module goes.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

# (message regex, module that warns): what megatron-core 0.16.1 + torch 2.13 print on a load
LOAD_WARNINGS = (
    r"`load_state_dict` is deprecated and will be removed in future versions\. Please use `load` instead\.",
    r"Please use DTensor instead and we are deprecating ShardedTensor\.",
)


@contextlib.contextmanager
def quiet_checkpoint_load() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in LOAD_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        yield
