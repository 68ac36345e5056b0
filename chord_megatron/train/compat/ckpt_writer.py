"""A dist-checkpointing save strategy that writes from the calling process.

megatron-core's `torch_dist` strategy writes even a synchronous save through a results queue
served by a spawned `multiprocessing.Manager` and forked writer processes. That costs a
process start per save, requires a `__main__` guard in every script that saves, and hangs
forever when the writer dies (e.g. without psutil). The checkpoints we write are small next to
a training step, so this strategy keeps the same on-disk format (readable by the stock loader)
and the same planning, but writes each rank's files in-process, one bucket after another.

Format and planning are megatron-core's; only the two places that start processes differ:
the results queue (an in-process queue instead of a Manager's) and the write function.
"""

from __future__ import annotations

import queue
from functools import partial
from typing import List

from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest
from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync
from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy


def _write_buckets_in_process(transform_list: list, rank: int, write_buckets: List, results_queue) -> None:
    """Same contract as FileSystemWriterAsync.write_preloaded_data_multiproc, without processes:
    puts {bucket index: write results} (or the first exception) on `results_queue`."""
    del rank
    if not filesystem_async.HAVE_PSUTIL:
        # write_preloaded_data reads the process's memory through psutil for a debug log line
        # only, and raises without it (megatron-core does not declare psutil; a bare GPU
        # machine may lack it): report 0 instead of failing the save.
        filesystem_async._process_memory = lambda: 0
    local_results: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()
    collected = {}
    for i, bucket in enumerate(write_buckets):
        done.put(i)  # write_preloaded_data takes one token off this queue when it finishes
        FileSystemWriterAsync.write_preloaded_data(transform_list, i, bucket, local_results, done, True)
        idx, result = local_results.get_nowait()
        if isinstance(result, Exception):
            results_queue.put(result)
            return
        collected[idx] = result
    results_queue.put(collected)


class InProcessTorchDistSaveStrategy(TorchDistSaveShardedStrategy):
    """`torch_dist` format, written synchronously by the calling process (one file per rank)."""

    def __init__(self):
        super().__init__("torch_dist", 1, thread_count=1)

    def async_save(self, sharded_state_dict, checkpoint_dir):
        # The writer asks filesystem_async for its results queue; a module-level cache holds it.
        # Filling the cache with an in-process queue keeps megatron from starting a Manager.
        if not isinstance(filesystem_async._results_queue, queue.Queue):
            filesystem_async._results_queue = queue.Queue()
        return super().async_save(sharded_state_dict, checkpoint_dir)

    def _get_save_and_finalize_callbacks(self, writer, save_state_dict_ret) -> AsyncRequest:
        request = super()._get_save_and_finalize_callbacks(writer, save_state_dict_ret)
        if request.async_fn is None:  # nothing to write on this rank
            return request
        transform_list = [writer.transforms] if hasattr(writer, "transforms") else []
        return request._replace(async_fn=partial(_write_buckets_in_process, transform_list))
