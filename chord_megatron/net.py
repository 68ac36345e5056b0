"""A free TCP port: for torchrun's master, the router, SGLang servers and weight-sync groups.

The port is free when this returns; the caller binds it soon after (a race every launcher has).
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at `host` ("" = every interface)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
