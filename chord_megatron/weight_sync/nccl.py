"""Broadcast transport: SGLang servers on other nodes join a process group with the trainer.

Setup, once: every server gets POST /init_weights_update_group (master address/port, world
size, and the rank of its first GPU; the trainer is rank 0, server i's GPUs follow as
rank_offset + j). The servers rendezvous at tcp://master_address:master_port under the store
prefix `group_name`, exactly as SGLang's init_custom_process_group does, and so must we:
`join_group` below is the trainer's side of that rendezvous.

Each sync: inside begin/end_weight_update, per bucket, POST /update_weights_from_distributed
with the bucket's names, dtypes and shapes (the servers then wait for the data), and rank 0
broadcasts the tensors in exactly that order. The HTTP calls return once the broadcasts have
arrived, so they are started first and awaited after.

A server that refuses an announcement (no session, unknown names, ...) never takes part in
the broadcast, which would then block until the group's timeout. So the broadcasts are
asynchronous and, while they run, the announcement is watched: its refusal ends the wait, and
the group, now out of step, is aborted and dropped (the next sync sets up a new one).

The new group cannot reuse the old one's name or port: torch keeps an aborted group's name
registered ("The specified group name has already been created") and its rendezvous store may
still listen on the port. So each reconnect takes a new name (`<group_name>_<n>`) and a port
nobody listens on, from the job's reserved `port_range` when there is one.
"""

from __future__ import annotations

import socket
import time
from typing import Iterable, Optional, Tuple

import torch
import torch.distributed as dist

from ..config_checks import sglang_gpus_per_server
from ..net import free_port
from ..train.compat.process_group import abort_process_group, new_process_group
from .buckets import SyncStats, WeightSyncError, bucketize, check_servers_take, update_session, with_last


def join_group(
    master_address: str,
    master_port: int,
    world_size: int,
    rank: int,
    *,
    group_name: str,
    backend: str = "nccl",
    timeout_s: float = 600.0,
):
    """A process group outside the default world, rendezvousing at tcp://address:port with the
    store keys prefixed by `group_name` (SGLang's convention). Blocks until all ranks joined."""
    return new_process_group(
        master_address, master_port, world_size, rank, group_name=group_name, backend=backend, timeout_s=timeout_s
    )


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


class NcclSync:
    """Callable transport for SGLangEngine(weight_sync=NcclSync(...)); call it on the trainer
    rank that holds the full tensors (rank 0 of the training job)."""

    def __init__(
        self,
        master_address: str,
        master_port: Optional[int],
        *,
        bucket_mb: float = 512,
        backend: str = "nccl",
        group_name: str = "weight_update_group",
        device: Optional[torch.device] = None,
        init_timeout_s: float = 600.0,
        poll_s: float = 0.01,
        port_range: Optional[Tuple[int, int]] = None,
    ):
        """`port_range` (first, last), inclusive: where the ports of the groups come from (the
        job's reserved ports: a launched job's other ports and SGLang's own lie next to them);
        without one, any free port of this host. `master_port` None: the first free one."""
        if port_range is not None and not 0 < port_range[0] <= port_range[1] < 65536:
            raise ValueError(f"port_range must be (first, last) with 0 < first <= last < 65536, got {port_range}")
        self.master_address, self.port_range = master_address, port_range
        self.master_port = 0  # none yet: _fresh_port may take any port of the range
        self.master_port = int(master_port) if master_port is not None else self._fresh_port()
        self.max_bytes = int(bucket_mb * 2**20)
        self.backend, self.group_name = backend, group_name
        self._base_group_name = group_name
        self._groups_abandoned = 0
        self._renew = False  # the last group was abandoned: the next one needs a new name and port
        self.device = device or (
            torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        )
        self.init_timeout_s = init_timeout_s
        self.poll_s = poll_s
        self.group = None

    def _fresh_port(self) -> int:
        """A port other than the current one that nobody on this host listens on."""
        if self.port_range is None:
            return free_port("")
        for port in range(self.port_range[0], self.port_range[1] + 1):
            if port != self.master_port and _bindable(port):
                return port
        raise WeightSyncError(
            f"no free port left in the reserved range {self.port_range[0]}-{self.port_range[1]} "
            f"for a new weight-update group"
        )

    def connect(self, engine) -> None:
        if self._renew:
            self.group_name = f"{self._base_group_name}_{self._groups_abandoned}"
            self.master_port = self._fresh_port()
            self._renew = False
        client = engine.client
        infos = engine.run(client.server_infos())
        check_servers_take(infos, "nccl")  # attached servers: the config's sglang: section may not describe them
        offsets, next_rank = {}, 1
        for url in client.worker_urls:
            offsets[url] = next_rank
            next_rank += sglang_gpus_per_server(infos[url])  # its ranks in the update group
        joined = engine.submit(
            client.init_weights_update_group(
                self.master_address,
                self.master_port,
                next_rank,
                offsets,
                group_name=self.group_name,
                backend=self.backend,
                timeout_s=self.init_timeout_s,
            )
        )
        try:
            self.group = join_group(
                self.master_address,
                self.master_port,
                next_rank,
                0,
                group_name=self.group_name,
                backend=self.backend,
                timeout_s=self.init_timeout_s,
            )
        except BaseException:
            joined.cancel()
            # The name may be registered and the store may hold the port: the next try renews both.
            self._groups_abandoned += 1
            self._renew = True
            raise
        joined.result(self.init_timeout_s)

    def __call__(self, engine, named: Iterable[Tuple[str, torch.Tensor]], version: str) -> SyncStats:
        if self.group is None:
            self.connect(engine)
        client = engine.client
        stats = SyncStats("nccl")
        with update_session(engine):
            for bucket, last in with_last(bucketize(named, self.max_bytes)):
                tensors = [t.to(self.device).contiguous() for _, t in bucket]
                announced = engine.submit(
                    client.update_weights_from_distributed(
                        [n for n, _ in bucket],
                        [str(t.dtype).replace("torch.", "") for t in tensors],
                        [list(t.shape) for t in tensors],
                        group_name=self.group_name,
                        weight_version=version if last else None,
                        flush_cache=last,
                    )
                )
                works = [dist.broadcast(t, src=0, group=self.group, async_op=True) for t in tensors]
                try:
                    self._wait_watching(works, announced)
                except BaseException:
                    self._abandon(engine)
                    raise
                announced.result()
                stats.add(bucket)
        return stats.finish()

    def _wait_watching(self, works, announced) -> None:
        """Until the broadcasts are done; a failed announcement ends the wait with its error."""
        while not all(w.is_completed() for w in works):
            if announced.done() and announced.exception() is not None:
                announced.result()  # raises the server's refusal
            time.sleep(self.poll_s)
        for w in works:
            w.wait()

    def _abandon(self, engine) -> None:
        """Abort the out-of-step group (its pending broadcasts end with it) and ask the servers
        to drop their side; best effort, the original error is what the caller raises."""
        group, self.group = self.group, None
        self._groups_abandoned += 1
        self._renew = True
        try:  # unregistered too: it would keep its name taken in this process, and its store alive
            abort_process_group(group)
        except Exception:
            try:
                group.abort()
            except Exception:
                pass
        try:
            engine.run(engine.client.destroy_weights_update_group(self.group_name))
        except Exception:
            pass

    def close(self, engine=None) -> None:
        if self.group is not None:
            if engine is not None:
                engine.run(engine.client.destroy_weights_update_group(self.group_name))
            dist.destroy_process_group(self.group)
            self.group = None
