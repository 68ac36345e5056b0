"""A process group outside the default world, from torch's private c10d helpers (torch 2.13).

SGLang's weight-update group is formed the way SGLang's own init_custom_process_group does:
a rendezvous at tcp://address:port with store keys prefixed by the group's name, then
torch.distributed's private `_new_process_group_helper`, and the group's ranks registered in
the private `_world` so that broadcast and friends accept it. A torch bump starts here.
"""

from __future__ import annotations

import datetime


def new_process_group(
    master_address: str,
    master_port: int,
    world_size: int,
    rank: int,
    *,
    group_name: str,
    backend: str,
    timeout_s: float,
):
    from torch.distributed.distributed_c10d import Backend, PrefixStore, _new_process_group_helper, _world, rendezvous

    timeout = datetime.timedelta(seconds=timeout_s)
    store, rank, world_size = next(
        rendezvous(f"tcp://{master_address}:{master_port}", rank, world_size, timeout=timeout)
    )
    store.set_timeout(timeout)
    store = PrefixStore(group_name, store)
    pg, _ = _new_process_group_helper(
        world_size, rank, [], Backend(backend), store, group_name=group_name, backend_options=None, timeout=timeout
    )
    # Registering the ranks lets torch.distributed's functions (broadcast, ...) take this group.
    _world.pg_group_ranks[pg] = {i: i for i in range(world_size)}
    return pg


def abort_process_group(pg) -> None:
    """Abort `pg` (its pending collectives end) and unregister it from torch's `_world`, without
    the shutdown that destroy_process_group would attempt on a group that is out of step.
    Unregistered, its name can be taken again and its rendezvous store can be freed."""
    from torch.distributed.distributed_c10d import _abort_process_group

    _abort_process_group(pg)
