"""The ports of a multi-process sidecar: chosen and held by the supervisor, shared by workers.

The supervisor resolves every listening address (port 0 included) to a concrete port and holds
it with a bound ``SO_REUSEPORT`` socket that never listens: it takes no connections, but keeps
the port ours while workers restart, and refuses other processes that bind without
``SO_REUSEPORT``. Workers bind the same concrete ports with ``SO_REUSEPORT`` and listen.
"""

from __future__ import annotations

import socket
from dataclasses import replace

from gossamer.proxy.process.settings import Address, ProxySettings, Upstream

__all__ = ["reserve", "reserve_all"]


def reserve(address: Address) -> tuple[socket.socket, Address]:
    """Hold ``address`` for the workers: (a bound ``SO_REUSEPORT`` socket, the concrete address).

    The port is first bound without ``SO_REUSEPORT``, so a port another process holds is
    refused (a ``SO_REUSEPORT`` bind alone would quietly share it).
    """
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((address.host, address.port))
        port = probe.getsockname()[1]
    hold = socket.socket(family, socket.SOCK_STREAM)
    try:
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        hold.bind((address.host, port))
    except OSError:
        hold.close()
        raise
    return hold, Address(address.host, port)


def reserve_all(settings: ProxySettings) -> tuple[ProxySettings, list[socket.socket]]:
    """Reserve every listening address of ``settings``: (settings with the concrete addresses,
    the held sockets to close when the sidecar stops)."""
    held: list[socket.socket] = []

    def take(address: Address | None) -> Address | None:
        if address is None:
            return None
        sock, bound = reserve(address)
        held.append(sock)
        return bound

    try:
        listen = replace(
            settings.listen,
            outbound=take(settings.listen.outbound),
            inbound=take(settings.listen.inbound),
            upstreams=tuple(
                Upstream(u.service, take(u.address) or u.address) for u in settings.listen.upstreams
            ),
        )
    except OSError:
        for sock in held:
            sock.close()
        raise
    return replace(settings, listen=listen), held
