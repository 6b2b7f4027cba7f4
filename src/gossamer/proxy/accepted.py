"""A connection a sidecar listener accepted, as the sidecar's set of live connections sees it.

``ProxyState.connections`` holds every accepted HTTP connection, HTTP/1.1
(``http1.downstream.DownstreamConnection``) and HTTP/2 (``h2.downstream.H2Downstream``)
alike; the idle sweep and the drain treat them through this interface only. ``counted`` and
``uncounted`` keep the connection gauges and the set in step, once per connection.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from mypy_extensions import trait

if TYPE_CHECKING:
    from gossamer.proxy.state import ProxyState

__all__ = ["AcceptedConnection"]


@trait
class AcceptedConnection:
    proxy: ProxyState
    direction: str
    transport: asyncio.Transport | None
    last_active_ns: int
    peer_serial: str  # of the caller's certificate (inbound mTLS), else empty

    def busy(self) -> bool:
        """Whether requests are in flight (a drain lets them finish)."""
        raise TypeError("connection responsibility")

    def sweep(
        self, now_ns: int, head_ns: int, idle_ns: int, body_ns: int, stream_ns: int
    ) -> None:
        """The periodic check: answer a request head not whole after ``head_ns`` or a body
        without progress for ``body_ns`` (408), a response without progress for
        ``stream_ns`` (504), close a connection idle for ``idle_ns``."""
        raise TypeError("connection responsibility")

    def close(self) -> None:
        raise TypeError("connection responsibility")

    def abort(self) -> None:
        """Cut the connection now (the drain deadline passed)."""
        transport = self.transport
        if transport is not None:
            transport.abort()

    def counted(self) -> None:
        """The connection was accepted: count it and join the set; past the sidecar's cap
        (``max_connections``, TCP relays included) it is cut at once (and leaves the set
        through ``uncounted`` like any other)."""
        proxy = self.proxy
        metrics = proxy.metrics
        metrics.connections_opened[self.direction] += 1
        metrics.connections_open[self.direction] += 1
        over = proxy.full()
        proxy.connections.add(self)
        if over:
            metrics.error(self.direction, "connection-overflow")
            transport = self.transport
            if transport is not None:
                transport.abort()

    def uncounted(self) -> None:
        """The connection is gone: leave the set (waking a drain waiting for it to empty)."""
        self.proxy.metrics.connections_open[self.direction] -= 1
        connections = self.proxy.connections
        connections.discard(self)
        if not connections:
            self.proxy.all_closed.set()
