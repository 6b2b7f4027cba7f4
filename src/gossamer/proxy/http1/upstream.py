"""Endpoint stage: connections from the proxy to an upstream, and the pool that reuses them.

``UpstreamConnection`` writes one request at a time and parses the response with httptools,
streaming the response head and body to the downstream connection that owns the exchange.
Response framing toward the downstream is decided here, once, from the upstream's headers:
Content-Length passes through, everything else is re-chunked (or close-delimited for an
HTTP/1.0 client). ``Pool`` keeps idle keep-alive connections per endpoint and opens new ones,
verifying the peer's SPIFFE identity when the connection is mTLS.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import httptools

from gossamer.identity.spiffe import peer_serial, peer_uri_sans
from gossamer.protocol.http1 import (
    LAST_CHUNK,
    HeadScan,
    ProxyError,
    encode_chunk,
    scan_headers,
)
from gossamer.protocol.scanner import Scanner, new_scanner
from gossamer.proxy.pipeline.retries import ERROR_HEADER, UNPROCESSED

if TYPE_CHECKING:
    from gossamer.proxy.http1.downstream import DownstreamConnection
    from gossamer.proxy.http1.exchange import Exchange
    from gossamer.proxy.http1.sink import ResponseSink
    from gossamer.proxy.pipeline.balancer import EndpointState
    from gossamer.proxy.snapshot.table import ConnectionAccount

__all__ = ["Pool", "UpstreamConnection", "open_upstream", "refused_peer"]

CONNECT_TIMEOUT = 5.0
MAX_IDLE_PER_ENDPOINT = 128
_NO_BODY_STATUS = frozenset({204, 304})

PoolKey = tuple[str, int]
P = TypeVar("P", bound=asyncio.BaseProtocol)


class _HeadResponseDone(Exception):
    """Raised from the parser callback to stop parsing after the head of a HEAD response."""


_APP_RESPONSE_DROP = frozenset({ERROR_HEADER})
_NO_DROP: frozenset[bytes] = frozenset()
_UNPROCESSED_STATUS = frozenset({502, 503})


def _error_cause(headers: list[tuple[bytes, bytes]]) -> bytes:
    for name, value in headers:
        if len(name) == len(ERROR_HEADER) and name.lower() == ERROR_HEADER:
            return value.strip()
    return b""


class _ResponseDropped(Exception):
    """Raised from the parser callback when the downstream wants this response retried."""


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "account",
        "closed",
        "downstream",
        "endpoint",
        "eof_framed",
        "exchange",
        "fresh",
        "headers",
        "interim",
        "key",
        "out_chunked",
        "parser",
        "peer_serial",
        "pool",
        "reason",
        "received",
        "reused",
        "scanner",
        "served",
        "transport",
        "tunnel_peer",
        "upstream_keep_alive",
    )
    __deletable__ = ("parser",)  # dropped on close

    def __init__(self, pool: Pool, key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        self.peer_serial = ""  # of the upstream's certificate (mTLS), else empty
        self.received = 0  # bytes read (the idle sweep watches it move)
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.downstream: ResponseSink | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.interim = False
        self.reused = False
        self.closed = False
        self.out_chunked = False
        self.eof_framed = False
        self.upstream_keep_alive = True
        self.tunnel_peer: DownstreamConnection | None = None  # set after a 101: raw relay
        self.account: ConnectionAccount | None = None  # the service's connection accounting
        self.endpoint: EndpointState | None = None
        self.served = 0
        self.fresh = False  # a request was sent and no byte of its response has come yet
        self.scanner: Scanner | None = None  # takes plain responses (made on first use)

    # === asyncio callbacks ===

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        peer = self.tunnel_peer
        if peer is not None:
            peer.write(data)
            return
        holder = self.downstream
        if holder is None:
            self._parse(data)
            return
        if self.fresh:
            self.fresh = False
            if self._plain_response(data, holder):
                return
        holder.hold()
        try:
            self._parse(data)
        finally:
            holder.flush()

    def _parse(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            ex = self.exchange
            downstream = self.downstream
            if ex is None or downstream is None or ex.status != 101:
                self._broken("upstream-protocol-error", "unexpected protocol upgrade")
                return
            self.exchange = None
            self.downstream = None
            ex.upstream = None
            downstream.start_tunnel(ex, self)  # a downstream connection becomes tunnel_peer
            rest = data[exc.args[0] :]
            if rest:
                downstream.write(rest)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadResponseDone):
                self.parser = httptools.HttpResponseParser(self)
                self._finish(self.upstream_keep_alive)
            elif isinstance(exc.__context__, _ResponseDropped):
                ex, downstream = self.exchange, self.downstream
                self.exchange = None
                self.downstream = None
                self.close()  # the rest of the dropped response is not read
                if ex is not None and downstream is not None:
                    ex.upstream = None
                    downstream.retry_dropped(ex)
            else:
                self._broken("upstream-protocol-error", f"{exc.__context__ or exc}")
        except httptools.HttpParserError as exc:
            self._broken("upstream-protocol-error", str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        # The parsers call back into this connection, which holds them: let them go now
        # rather than leave the cycle (and what it reaches) to the cyclic GC.
        del self.parser
        if self.scanner is not None:
            self.scanner.close()
            self.scanner = None
        self.pool.discard(self)
        account = self.account
        if account is not None:
            self.account = None
            account.connection_closed()
        if self.tunnel_peer is not None:
            self.tunnel_peer.close()
            self.tunnel_peer = None
            return
        ex = self.exchange
        if ex is None:
            return
        downstream = self.downstream
        assert downstream is not None
        if ex.response_started and self.eof_framed:
            self._finish(False)  # a read-until-close body ends with the connection
            return
        self.exchange = None
        self.downstream = None
        ex.upstream = None
        if ex.response_started:
            downstream.abort_response(ex, "upstream-reset")
        else:
            downstream.upstream_failed(ex, "upstream-reset", "upstream closed the connection "
                                       "before responding", reused=self.reused)

    def pause_writing(self) -> None:
        downstream = self.downstream or self.tunnel_peer
        if downstream is not None:
            downstream.pause_for_upstream()

    def resume_writing(self) -> None:
        downstream = self.downstream or self.tunnel_peer
        if downstream is not None:
            downstream.resume_for_upstream()

    # === requests ===

    def send(self, ex: Exchange, downstream: ResponseSink) -> None:
        """Start ``ex`` on this connection: write its head and whatever body is buffered."""
        transport = self.transport
        assert transport is not None
        self.exchange = ex
        self.downstream = downstream
        ex.upstream = self
        self.headers = []
        self.reason = b""
        body = ex.body
        if body:
            body.insert(0, ex.head)
            transport.write(b"".join(body))
            ex.body = None
        else:
            transport.write(ex.head)
        ex.sent_ns = time.monotonic_ns()
        self.fresh = True

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _plain_response(self, data: bytes, downstream: ResponseSink) -> bool:
        """Forward ``data`` by slicing if it is one whole plain response (see
        ``gossamer.protocol.plain``) to a plain exchange; False leaves it to the full parser."""
        ex = self.exchange
        if ex is None or ex.is_head or ex.http10 or not ex.keep_alive or ex.upgrade:
            return False
        if ex.rule is not None and ex.rule.filters.edits_response:
            return False
        if ex.stages is not None and ex.stages.responses:
            return False
        scanner = self.scanner
        if scanner is None:
            scanner = self.scanner = new_scanner()
        plain = scanner.response(data)
        if plain is None:
            return False
        status, forward, keep_alive = plain
        if status in _UNPROCESSED_STATUS:
            # From another sidecar: perhaps no app saw it; from the app: it may not say so.
            # Either way the full parser reads (or drops) ``x-gossamer-error``.
            return False
        if downstream.on_response_status(ex, status):  # dropped for a retry
            self.exchange = None
            self.downstream = None
            ex.upstream = None
            self.close()
            downstream.retry_dropped(ex)
            return True
        ex.status = status
        if ex.stages is not None:  # an observer: the body's size, and the response held
            ex.response_bytes = len(forward) - forward.find(b"\r\n\r\n") - 4
            downstream.hold()  # until the stages completed (docs/internals.md §15)
        downstream.response_head(ex, forward)
        self._finish(keep_alive)
        return True

    # === httptools callbacks ===

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        downstream = self.downstream
        if ex is None or downstream is None:
            raise ProxyError(502, "upstream-protocol-error", "response without a request")
        status = self.parser.get_status_code()
        pool = self.pool
        headers = self.headers
        self.headers = []
        if status in _UNPROCESSED_STATUS:
            scan = scan_headers(headers, _APP_RESPONSE_DROP if pool.from_app else _NO_DROP)
            if not pool.from_app:
                cause = _error_cause(headers)
                if cause in UNPROCESSED and downstream.not_processed(ex, cause.decode("latin-1")):
                    raise _ResponseDropped
        else:
            scan = scan_headers(headers)
        if status < 200:
            self._interim(ex, downstream, status, scan)
            return
        if downstream.on_response_status(ex, status):
            raise _ResponseDropped
        ex.status = status
        self.upstream_keep_alive = self.parser.should_keep_alive()
        rule = ex.rule
        kept = rule.filters.response_headers(scan.kept) if rule is not None else scan.kept
        stages = ex.stages
        if stages is not None and stages.responses:
            kept = stages.response(ex, status, kept)
        parts = [_status_line(status, self.reason), _join(kept)]
        self.reason = b""
        no_body = ex.is_head or status in _NO_BODY_STATUS
        self.out_chunked = False
        self.eof_framed = False
        if not no_body and not scan.chunked and scan.content_length is None:
            self.eof_framed = True
        if not no_body and scan.content_length is None:
            if ex.http10:
                ex.keep_alive = False  # the body ends when we close
            else:
                self.out_chunked = True
                coding = scan.transfer_encoding if scan.chunked else b"chunked"
                parts.append(b"transfer-encoding: %b\r\n" % coding)
        if not ex.keep_alive:
            parts.append(b"connection: close\r\n")
        elif ex.http10:
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        downstream.response_head(ex, b"".join(parts))
        if ex.is_head:
            raise _HeadResponseDone

    def _interim(self, ex: Exchange, downstream: ResponseSink, status: int, scan: HeadScan) -> None:
        """A 1xx head: a 101 switches protocols (for an upgrade request only); other interim
        responses go to HTTP/1.1 clients as they are, and the final one follows."""
        if status == 101:
            if not ex.upgrade or not scan.upgrade:
                raise ProxyError(502, "upstream-protocol-error", "101 without an upgrade")
            ex.status = 101
            ex.response_started = True
            downstream.write(
                _status_line(101, self.reason) + _join(scan.kept)
                + b"connection: upgrade\r\nupgrade: %b\r\n\r\n" % scan.upgrade
            )
        else:
            self.interim = True
            if not ex.http10:
                downstream.write(_status_line(status, self.reason) + _join(scan.kept) + b"\r\n")
        self.reason = b""

    def on_body(self, data: bytes) -> None:
        downstream = self.downstream
        if downstream is not None:
            ex = self.exchange
            if ex is not None:
                ex.response_bytes += len(data)
            downstream.write(encode_chunk(data) if self.out_chunked else data)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is not None and ex.status == 101:
            return  # the parser now raises HttpParserUpgrade: data_received starts the tunnel
        if self.interim:
            self.interim = False
            return
        self._finish(self.parser.should_keep_alive())

    # === internals ===

    def _finish(self, keep_alive: bool) -> None:
        ex = self.exchange
        downstream = self.downstream
        if ex is None or downstream is None:
            return
        self.exchange = None
        self.downstream = None
        ex.upstream = None
        if self.out_chunked:
            downstream.write(LAST_CHUNK)
            self.out_chunked = False
        self.served += 1
        account = self.account
        reusable = (
            keep_alive and ex.body_done and not self.closed and not self.eof_framed
            and not ex.upgrade
            and (account is None or not account.exhausted(self.served))
        )
        self.eof_framed = False
        downstream.response_complete(ex)
        if reusable:
            self.reused = True
            transport = self.transport
            if transport is not None and not transport.is_reading():
                # Paused for a slow client when this response came in whole: the next
                # exchange on this connection must be read.
                transport.resume_reading()
            if account is None or not account.hand_over(self):
                self.pool.release(self)
        else:
            self.close()

    def _broken(self, cause: str, detail: str) -> None:
        ex = self.exchange
        downstream = self.downstream
        self.exchange = None
        self.downstream = None
        self.close()
        if ex is None or downstream is None:
            return
        ex.upstream = None
        if ex.response_started:
            downstream.abort_response(ex, cause)
        else:
            downstream.upstream_failed(ex, cause, detail, reused=False)


def _status_line(status: int, reason: bytes) -> bytes:
    return b"HTTP/1.1 %d %b\r\n" % (status, reason or b"-")


def _join(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join([b"%b: %b\r\n" % pair for pair in headers])


class Pool:
    """Idle keep-alive connections per endpoint; opens new ones on demand."""

    def __init__(
        self, *, tls: Callable[[], ssl.SSLContext] | None = None, from_app: bool = False
    ) -> None:
        self.tls = tls  # the mTLS client context now (it is replaced when a root leaves)
        # To the local app: its 502 and 503 answers may not carry ``x-gossamer-error`` (that
        # would claim no app saw the request, retries.py). Else to other sidecars: they may.
        self.from_app = from_app
        self._idle: dict[PoolKey, list[UpstreamConnection]] = {}
        self.opened = 0
        self.revoked: frozenset[str] = frozenset()  # upstream certificates refused

    def take(self, key: PoolKey) -> UpstreamConnection | None:
        stack = self._idle.get(key)
        while stack:
            conn = stack.pop()
            if not conn.closed:
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        stack = self._idle.setdefault(conn.key, [])
        if len(stack) >= MAX_IDLE_PER_ENDPOINT or (conn.peer_serial in self.revoked):
            conn.close()
        else:
            stack.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        stack = self._idle.get(conn.key)
        if stack and conn in stack:
            stack.remove(conn)

    def idle_count(self) -> int:
        return sum(len(stack) for stack in self._idle.values())

    def revoke(self, revoked: frozenset[str]) -> None:
        """Refuse upstreams with these certificates from now on; close idle connections to
        them (busy ones close when their exchange ends)."""
        self.revoked = revoked
        for stack in self._idle.values():
            for conn in [c for c in stack if c.peer_serial in revoked]:
                stack.remove(conn)
                conn.close()

    def close_all(self) -> None:
        for stack in self._idle.values():
            for conn in stack:
                conn.close()
        self._idle.clear()

    async def connect(
        self, key: PoolKey, *, sni: str | None = None, identity: str | None = None
    ) -> UpstreamConnection:
        """Open a new connection; with TLS, verify the peer carries ``identity``.

        Raises ``ProxyError`` (502 ``connect-failed`` or ``upstream-identity-mismatch``).
        """
        context = None if self.tls is None else self.tls()
        transport, conn = await open_upstream(
            lambda: UpstreamConnection(self, key), key, context, sni
        )
        self.opened += 1
        if identity is not None and context is not None:
            refusal = refused_peer(transport, identity, self.revoked)
            if refusal is not None:
                conn.close()
                raise refusal
            conn.peer_serial = peer_serial(transport.get_extra_info("peercert"))
        return conn


async def open_upstream(
    factory: Callable[[], P], key: PoolKey, context: ssl.SSLContext | None, sni: str | None
) -> tuple[asyncio.Transport, P]:
    """Connect to ``key`` (over TLS with ``context``, SNI ``sni`` or the host) within
    ``CONNECT_TIMEOUT``; any failure is a ``ProxyError`` 502 ``connect-failed``."""
    loop = asyncio.get_running_loop()
    host, port = key
    kwargs: dict[str, Any] = {}
    if context is not None:
        kwargs = {"ssl": context, "server_hostname": sni or host}
    try:
        transport, conn = await asyncio.wait_for(
            loop.create_connection(factory, host, port, **kwargs), CONNECT_TIMEOUT
        )
    except TimeoutError:
        raise ProxyError(502, "connect-failed", f"{host}:{port}: timed out") from None
    except ssl.SSLError as exc:
        raise ProxyError(502, "connect-failed", f"{host}:{port}: TLS: {exc}") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ProxyError(502, "connect-failed", f"{host}:{port}: {reason}") from None
    return transport, conn


def refused_peer(
    transport: asyncio.BaseTransport, identity: str, revoked: frozenset[str]
) -> ProxyError | None:
    """The 502 error when the TLS peer of ``transport`` does not carry the URI SAN ``identity``
    (``upstream-identity-mismatch``) or its certificate is revoked (``upstream-revoked``);
    None when it may be used."""
    peercert = transport.get_extra_info("peercert")
    sans = peer_uri_sans(peercert)
    if identity not in sans:
        got = ", ".join(sans) or "no SPIFFE ID"
        return ProxyError(502, "upstream-identity-mismatch", f"expected {identity}, got {got}")
    if revoked and peer_serial(peercert) in revoked:
        return ProxyError(502, "upstream-revoked", f"{identity}: its certificate is revoked")
    return None
