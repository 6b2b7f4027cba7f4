"""Endpoint stage of the HTTP/2 path: one multiplexed client connection per endpoint.

``H2Upstream`` is the client side of an HTTP/2 connection (h2 over mTLS to another sidecar,
or h2c to the local app); every proxied stream to that endpoint is a stream on it. It relays
response events to the ``ProxiedStream`` that owns each stream id. A GOAWAY from the peer
takes it out of the pool (streams it had accepted finish; nghttp2 reports the others as
refused, and they start again elsewhere). ``H2Pool`` keeps one live connection per endpoint
and coalesces concurrent connects, checking ALPN ``h2`` and the peer's SPIFFE ID on TLS.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from gossamer.identity.spiffe import peer_serial
from gossamer.protocol.h2.session import (
    CLOSED,
    DATA,
    END,
    GOAWAY,
    HEADERS,
    Event,
    H2Error,
    H2Session,
)
from gossamer.protocol.http1 import ProxyError
from gossamer.proxy.h2.connection import CLIENT_SETTINGS, CONNECTION_WINDOW, FlushingConnection
from gossamer.proxy.h2.stream import INTERNAL_ERROR, ProxiedStream
from gossamer.proxy.http1.upstream import open_upstream, refused_peer

__all__ = ["H2Pool", "H2Upstream"]

log = logging.getLogger("gossamer.proxy.h2")

PoolKey = tuple[str, int]


class H2Upstream(FlushingConnection, asyncio.Protocol):
    """A client HTTP/2 connection carrying many proxied streams to one endpoint."""

    def __init__(self, pool: H2Pool, key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        self.peer_serial = ""  # of the upstream's certificate (mTLS), else empty
        self.session = H2Session(
            client=True, settings=CLIENT_SETTINGS, connection_window=CONNECTION_WINDOW
        )
        self.streams: dict[int, ProxiedStream] = {}
        self.transport: asyncio.Transport | None = None
        self.write_paused = False
        self._flush_handle: asyncio.Handle | None = None
        self.closed = False
        self.goaway_received = False
        self.served = 0  # streams opened (counted when a connection quota applies)

    @property
    def usable(self) -> bool:
        """Open and still accepting new streams."""
        return not self.closed and not self.goaway_received and self.session.request_allowed()

    # === asyncio callbacks ===

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flush()  # preface and SETTINGS

    def data_received(self, data: bytes) -> None:
        try:
            events = self.session.receive(data)
        except H2Error as exc:
            log.info("upstream HTTP/2 session failed: %s", exc)
            self.abort()
            return
        self.handle_events(events)
        self.flush()

    def handle_events(self, events: list[Event]) -> None:
        streams = self.streams
        for kind, stream_id, a, b in events:
            if kind == DATA:
                stream = streams.get(stream_id)
                if stream is not None:
                    stream.response_data(a)
                else:
                    self.session.consume(stream_id, len(a))
            elif kind == HEADERS:
                stream = streams.get(stream_id)
                if stream is not None:
                    stream.response_headers(a, b)
            elif kind == END:
                stream = streams.get(stream_id)
                if stream is not None:
                    stream.response_end()
            elif kind == CLOSED:
                stream = streams.pop(stream_id, None)
                if stream is not None:
                    stream.upstream_closed(a, b)
            elif kind == GOAWAY:
                self.goaway_received = True
                self.pool.discard(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.cancel_flush()
        self.pool.discard(self)
        streams = list(self.streams.values())
        self.streams.clear()
        self.session.close()
        for stream in streams:
            stream.upstream_closed(INTERNAL_ERROR, None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.flush()

    # === lifecycle ===

    def close(self) -> None:
        """Stop taking streams; close once those in flight are done."""
        if self.closed or self.transport is None:
            return
        self.goaway_received = True
        self.pool.discard(self)
        self.session.goaway()
        self.flush()
        if not self.streams:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class H2Pool:
    """One HTTP/2 connection per endpoint (h2 over mTLS, or h2c when no TLS)."""

    def __init__(self, tls: Callable[[], ssl.SSLContext | None] | None = None) -> None:
        self._tls = tls  # returns the current client context (ALPN h2), None while unavailable
        self._conns: dict[PoolKey, H2Upstream] = {}
        self._connecting: dict[tuple[PoolKey, str | None], asyncio.Future[H2Upstream]] = {}
        self.opened = 0
        self.revoked: frozenset[str] = frozenset()  # upstream certificates refused

    def take(self, key: PoolKey) -> H2Upstream | None:
        conn = self._conns.get(key)
        if conn is not None and conn.usable:
            return conn
        return None

    def discard(self, conn: H2Upstream) -> None:
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]

    def connections(self) -> list[H2Upstream]:
        return list(self._conns.values())

    def revoke(self, revoked: frozenset[str]) -> None:
        """Refuse upstreams with these certificates from now on: connections to them take no
        new streams (those in flight finish)."""
        self.revoked = revoked
        for conn in [c for c in self._conns.values() if c.peer_serial in revoked]:
            self.discard(conn)
            conn.close()

    def close_all(self) -> None:
        for conn in list(self._conns.values()):
            conn.close()
        self._conns.clear()

    async def connect(
        self, key: PoolKey, *, sni: str | None = None, identity: str | None = None
    ) -> H2Upstream:
        """The endpoint's connection, opened now if needed (concurrent callers share one).

        Raises ``ProxyError`` (502 ``connect-failed`` or ``upstream-identity-mismatch``).
        """
        conn = self.take(key)
        if conn is not None:
            return conn
        slot = (key, identity)
        waiter = self._connecting.get(slot)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            self._connecting[slot] = waiter
            try:
                conn = await self._open(key, sni, identity)
            except ProxyError as exc:
                waiter.set_exception(exc)
                waiter.exception()  # retrieved: no "never retrieved" warning if nobody waits
                raise
            finally:
                self._connecting.pop(slot, None)
            self._conns[key] = conn
            waiter.set_result(conn)
            return conn
        return await asyncio.shield(waiter)

    async def _open(self, key: PoolKey, sni: str | None, identity: str | None) -> H2Upstream:
        host, port = key
        tls = self._tls
        context = tls() if tls is not None else None
        if tls is not None and context is None:
            raise ProxyError(502, "connect-failed", "no workload certificate for mTLS yet")
        transport, conn = await open_upstream(lambda: H2Upstream(self, key), key, context, sni)
        self.opened += 1
        if context is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            if alpn != "h2":
                conn.abort()
                raise ProxyError(
                    502, "connect-failed", f"{host}:{port}: peer did not agree to h2 ({alpn})"
                )
            if identity is not None:
                refusal = refused_peer(transport, identity, self.revoked)
                if refusal is not None:
                    conn.abort()
                    raise refusal
                conn.peer_serial = peer_serial(transport.get_extra_info("peercert"))
        return conn
