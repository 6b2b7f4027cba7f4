"""What both ends of an HTTP/2 proxy hop share: the session settings and batched writing.

``FlushingConnection`` is mixed into the downstream (server) and upstream (client) protocol
classes. Anything that queues output on a session (a submitted response, forwarded body
bytes, a WINDOW_UPDATE credited by the other side of a stream) calls ``schedule_flush``; one
flush per connection per loop iteration then writes everything nghttp2 has in a single
``transport.write``. While the transport is paused for writing nothing is pulled from the
session, so body bytes stay queued, their source is not credited, and the peer that sends them
runs out of flow-control window: backpressure across the proxy.
"""

from __future__ import annotations

import asyncio
import logging

from mypy_extensions import trait

from gossamer.protocol.h2 import binding
from gossamer.protocol.h2.selfcheck import self_check
from gossamer.protocol.h2.session import Event, H2Error, H2Session

__all__ = [
    "CLIENT_SETTINGS",
    "CONNECTION_WINDOW",
    "SERVER_SETTINGS",
    "STREAM_WINDOW",
    "FlushingConnection",
]

log = logging.getLogger("gossamer.proxy.h2")

self_check()  # the declarations against the loaded library, before any traffic

STREAM_WINDOW = 256 * 1024  # per stream: the most a peer may send before we pass it on
CONNECTION_WINDOW = 2 * 1024 * 1024  # per connection: bounds the bytes buffered per connection
MAX_CONCURRENT_STREAMS = 256  # per connection (HAProxy and nginx allow 100-128)
MAX_HEADER_LIST_SIZE = 64 * 1024

SERVER_SETTINGS = (
    (binding.SETTINGS_MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS),
    (binding.SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
    (binding.SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_SIZE),
)
CLIENT_SETTINGS = (
    (binding.SETTINGS_ENABLE_PUSH, 0),
    (binding.SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
    (binding.SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_SIZE),
)


@trait
class FlushingConnection:
    """Batched writes of an ``H2Session`` to an asyncio transport."""

    session: H2Session
    transport: asyncio.Transport | None
    write_paused: bool
    _flush_handle: asyncio.Handle | None

    def schedule_flush(self) -> None:
        if self._flush_handle is None and self.transport is not None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._run_flush)

    def _run_flush(self) -> None:
        self._flush_handle = None
        self.flush()

    def flush(self) -> None:
        """Write what the session has to send; close when it wants neither read nor write."""
        transport = self.transport
        session = self.session
        if transport is None or session.closed:
            return
        if not self.write_paused:
            for _ in range(8):  # events completed by sending may queue more output
                try:
                    data = session.data_to_send()
                except H2Error as exc:
                    log.info("HTTP/2 session failed while sending: %s", exc)
                    transport.abort()
                    return
                if data:
                    transport.write(data)
                events = session.take_events()
                if not events:
                    break
                self.handle_events(events)
                if self.transport is None or session.closed:
                    return
        if not session.want_read() and not session.want_write():
            transport.close()

    def handle_events(self, events: list[Event]) -> None:
        """Act on session events (from receiving, or completed by sending)."""
        raise TypeError("subclass responsibility")

    def cancel_flush(self) -> None:
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()
            self._flush_handle = None
