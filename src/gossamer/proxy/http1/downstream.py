"""Downstream side of an HTTP/1.1 proxy hop: a connection accepted by a sidecar listener.

This module owns parsing requests with httptools, limits (header block, URI), pipelining (one
exchange in flight, later ones queued with reading paused), body buffering until an upstream is
attached, backpressure in both directions, and the proxy's own error responses. What is
direction-specific (how the request head is rewritten, where it goes) is left to the
``OutboundConnection`` and ``InboundConnection`` subclasses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, ClassVar

import httptools

from gossamer.protocol.http1 import (
    LAST_CHUNK,
    HeadScan,
    ProxyError,
    check_request_head,
    encode_chunk,
    error_response,
    parse_error,
    render_headers,
    scan_headers,
)
from gossamer.protocol.scanner import Scanner, new_scanner
from gossamer.proxy.accepted import AcceptedConnection
from gossamer.proxy.http1.exchange import Exchange
from gossamer.proxy.http1.sink import ResponseSink, response_started

if TYPE_CHECKING:
    from gossamer.proxy.http1.upstream import UpstreamConnection
    from gossamer.proxy.snapshot.http_rules import MirrorPolicy
    from gossamer.proxy.state import ProxyState

__all__ = ["DownstreamConnection"]

log = logging.getLogger("gossamer.proxy")

MAX_HEADER_BYTES = 64 * 1024
MAX_URI_BYTES = 16 * 1024
MAX_BUFFERED_BODY = 256 * 1024

# Why reading from the downstream is paused (a bit each; reading resumes when none is left).
PAUSE_PIPELINE = 1
PAUSE_UPSTREAM = 2
PAUSE_BUFFER = 4
PAUSE_UPGRADE = 8  # an upgrade request waits for its answer: nothing more is read meanwhile


class DownstreamConnection(ResponseSink, AcceptedConnection):
    __deletable__ = ("parser",)  # dropped on close (see drop_parsers)
    direction = "outbound"
    drop_headers: ClassVar[frozenset[bytes]] = frozenset()
    wants_host = False  # whether the plain path must find the Host header

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.parsing: Exchange | None = None
        self.header_bytes = 0
        self.paused = 0
        self.write_paused = False
        self.closed = False
        self.last_active_ns = time.monotonic_ns()
        self.peer_serial = ""
        # After a 101, bytes flow both ways untouched: the upstream connection we tunnel to.
        self.tunnel: UpstreamConnection | None = None
        self.upgrading: Exchange | None = None  # an upgrade request waiting for its answer
        # Bytes that came after an upgrade request: the new protocol's, if the app answers 101;
        # sent on only then (before, they could be a request smuggled past the stripping).
        self.early: list[bytes] | None = None
        # While the upstream's bytes are parsed, writes are gathered here and sent in one
        # syscall (a response head and its body usually arrive together).
        self.held: list[bytes] | None = None
        self.scanner: Scanner | None = None  # takes plain requests (made on first use)
        # A request whose head was just parsed, dispatched only once the rest of the bytes in
        # hand parsed cleanly: a request they show to be malformed is refused unforwarded.
        self.ready: Exchange | None = None
        # Request body bytes parsed, and where the sweep last saw the count (a stalled body).
        self.body_seen = 0
        self.body_mark = -1
        self.body_since = 0
        self.response_mark = -1  # upstream bytes seen at the last sweep, -1: not watching
        self.response_since = 0

    # === asyncio callbacks ===

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.counted()

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            if tunnel.transport is not None:
                tunnel.transport.write(data)
            return
        if self.closed:
            return
        if (
            data[-4:] == b"\r\n\r\n"
            and not self.queue
            and self.parsing is None
            and self.upgrading is None
            and self.plain_request(data)
        ):
            return
        upgrading = self.upgrading  # a local: the parser's callbacks set the attribute
        if upgrading is not None:
            self._hold_early(data)  # read before the pause took effect
            return
        try:
            self._feed(data)
        finally:
            ready = self.ready
            self.ready = None
        if ready is not None and not self.closed:
            self._dispatch_ready(ready)

    def _dispatch_ready(self, ex: Exchange) -> None:
        """Dispatch a request parsed in full from the bytes in hand (as the parser's callback
        did before: a ``ProxyError`` is the answer, any other exception a logged 500)."""
        try:
            self.dispatch(ex)
        except ProxyError as exc:
            self.refuse(exc.status, exc.cause, exc.detail)
            return
        except Exception as exc:
            log.exception("internal error while dispatching a request", exc_info=exc)
            self.refuse(500, "proxy-internal-error", type(exc).__name__)
            return
        if ex.upstream is not None:
            self._resume(PAUSE_BUFFER)  # its body, buffered meanwhile, went out with it

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.upgrading is not None:
                self._pause(PAUSE_UPGRADE)
                rest = data[exc.args[0] :]
                if rest:
                    self._hold_early(rest)
            else:
                self.refuse(400, "bad-request", "unexpected protocol upgrade")
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ProxyError):
                self.refuse(cause.status, cause.cause, cause.detail)
            else:
                log.exception("internal error while parsing a request", exc_info=cause)
                self.refuse(500, "proxy-internal-error", type(cause).__name__)
        except httptools.HttpParserError as exc:
            error = parse_error(str(exc) or type(exc).__name__)
            self.refuse(error.status, error.cause, error.detail)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.uncounted()
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        for ex in self.queue:
            ex.cancel_timers()
            if ex.stages is not None and not ex.response_started:
                ex.stages.complete(ex)  # status 0: the caller went away first
            upstream = ex.upstream
            if upstream is not None:
                upstream.exchange = None
                upstream.downstream = None
                upstream.close()  # mid-exchange: the connection cannot be reused
            if ex.endpoint is not None:
                ex.endpoint.pending -= 1
                ex.endpoint = None
        self.queue.clear()
        # Exchanges point back at their connection (``Exchange.down``): let go of every one
        # this connection holds, or the pair would wait for the cyclic GC.
        self.parsing = None
        self.upgrading = None
        self.early = None
        self.transport = None
        self.drop_parsers()

    def busy(self) -> bool:
        return bool(self.queue)

    def sweep(
        self, now_ns: int, head_ns: int, idle_ns: int, body_ns: int, stream_ns: int
    ) -> None:
        ex = self.parsing
        if ex is not None and not ex.method and not self.queue:  # head still incomplete
            if now_ns - ex.start_ns > head_ns:
                self.refuse(408, "request-header-timeout", "request head not received in time")
        elif ex is not None and ex.method and not ex.body_done and not ex.upgrade:
            # A body on its way: is it moving? (An upgrade's bytes wait for its 101.)
            if self.body_seen != self.body_mark:
                self.body_mark = self.body_seen
                self.body_since = now_ns
            elif now_ns - self.body_since > body_ns:
                self.refuse(408, "request-body-timeout", "the request body stopped arriving")
        elif not self.queue and ex is None and now_ns - self.last_active_ns > idle_ns:
            self.close()
        if self.queue and not self.closed:
            self._sweep_response(self.queue[0], now_ns, stream_ns)

    def _sweep_response(self, ex: Exchange, now_ns: int, stream_ns: int) -> None:
        """Is the answer to the oldest request moving? Bytes from its upstream count."""
        upstream = ex.upstream
        if upstream is None or not ex.body_done or ex.upgrade or self.tunnel is not None:
            self.response_mark = -1
            return
        if upstream.received != self.response_mark:
            self.response_mark = upstream.received
            self.response_since = now_ns
        elif now_ns - self.response_since > stream_ns:
            self.response_mark = -1
            self.refuse(504, "upstream-idle-timeout", "the upstream stopped answering")

    def drop_parsers(self) -> None:
        """Let the parsers go: each calls back into this connection, which holds it, so the
        pair would wait for the cyclic GC (which a busy sidecar runs rarely) with all the
        memory they reach. Nothing is parsed here after this."""
        del self.parser
        if self.scanner is not None:
            self.scanner.close()
            self.scanner = None

    def pause_writing(self) -> None:
        self.write_paused = True
        upstream = self.tunnel or (self.queue[0].upstream if self.queue else None)
        if upstream is not None and upstream.transport is not None:
            upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        upstream = self.tunnel or (self.queue[0].upstream if self.queue else None)
        if upstream is not None and upstream.transport is not None:
            upstream.transport.resume_reading()

    # === httptools callbacks ===

    def on_message_begin(self) -> None:
        self.parsing = Exchange(time.monotonic_ns(), self)
        self.header_bytes = 0

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        ex.target += url
        if len(ex.target) > MAX_URI_BYTES:
            raise ProxyError(414, "uri-too-long", f"request target over {MAX_URI_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        if ex.method:
            # A trailer field (the head is done): never a header of the request, and not
            # forwarded (the proxy ends a chunked body with the last chunk alone).
            self.header_bytes += len(name) + len(value) + 4
            if self.header_bytes > MAX_HEADER_BYTES:
                raise ProxyError(431, "headers-too-large", "trailer block too large")
            return
        # llhttp skips the whitespace before a value but keeps what trails it, which is not
        # part of the value either (RFC 9110 5.5): "Host: catalog " names catalog, as on the
        # plain path (whose scanners strip both ends).
        ex.headers.append((name, value.rstrip(b" \t")))
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > MAX_HEADER_BYTES:
            raise ProxyError(
                431, "headers-too-large", f"header block over {MAX_HEADER_BYTES} bytes"
            )

    def on_headers_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        parser = self.parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise ProxyError(505, "http-version-not-supported", f"HTTP/{version} is not HTTP/1")
        ex.method = parser.get_method()
        ex.http10 = version == "1.0"
        ex.keep_alive = parser.should_keep_alive()
        ex.is_head = ex.method == b"HEAD"
        scan = scan_headers(ex.headers, self.drop_headers)
        check_request_head(scan, ex.target, ex.http10)  # Host, framing: ambiguous is refused
        ex.chunked = scan.chunked
        ex.has_body = scan.chunked or (
            scan.content_length is not None and scan.content_length.strip() != b"0"
        )
        ex.body_done = not ex.has_body
        if parser.should_upgrade():  # an Upgrade, or CONNECT
            ex.keep_alive = False  # the connection becomes a tunnel, or closes after the answer
            self.upgrading = ex
            if ex.method == b"CONNECT":
                self.connect_head(ex)  # no head to forward: the tunnel is opened here
            elif not scan.upgrade:
                raise ProxyError(400, "bad-request", "Connection: upgrade without Upgrade")
            else:
                ex.upgrade = scan.upgrade
                ex.head = self.request_head(ex, scan)
        else:
            ex.head = self.request_head(ex, scan)
        queue = self.queue
        queue.append(ex)
        if len(queue) == 1:
            self.ready = ex  # dispatched by data_received once the bytes in hand are parsed
        else:
            self._pause(PAUSE_PIPELINE)

    def connect_head(self, ex: Exchange) -> None:
        """A CONNECT request's head was parsed: refused here (``ProxyError``); the outbound
        port opens tunnels (``http1.connect``)."""
        raise ProxyError(400, "bad-request", "CONNECT is served on the outbound port only")

    def on_body(self, data: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        self.body_seen += len(data)
        ex.request_bytes += len(data)
        self._forward_body(ex, encode_chunk(data) if ex.chunked else data)

    def on_message_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        self.parsing = None
        if ex.chunked:
            self._forward_body(ex, LAST_CHUNK)
        ex.body_done = True

    def plain_request(self, data: bytes) -> bool:
        """Take ``data`` if it is one whole plain request (see ``gossamer.protocol.plain``):
        the head is forwarded by slicing. False leaves it to the full parser, untouched."""
        scanner = self.scanner
        if scanner is None:
            scanner = self.scanner = new_scanner()
        plain = scanner.request(data, self.wants_host, self.proxy.access_log is not None)
        if plain is None:
            return False
        method, target, head, host, request_id, keep_alive, traceparent, b3, user_agent = plain
        ex = Exchange(time.monotonic_ns(), self)
        ex.method = method
        ex.is_head = method == b"HEAD"
        ex.keep_alive = keep_alive
        ex.body_done = True
        ex.target = target
        try:
            ex.head = self.plain_head(ex, head, host, request_id)
        except ProxyError as exc:
            self.refuse(exc.status, exc.cause, exc.detail)
            return True
        ex.scanned_plain = ex.plain
        ex.scanned_traceparent = traceparent
        ex.scanned_b3 = b3
        ex.scanned_user_agent = user_agent
        self.queue.append(ex)
        self.dispatch(ex)
        return True

    def keep_head(self, ex: Exchange, path: bytes, scan: HeadScan) -> None:
        """Keep what the upstream request head is made of: path, forwardable headers, framing,
        and a request id (kept, or generated and added)."""
        headers = scan.kept
        rid = scan.request_id
        if rid is None:
            rid = self.proxy.new_request_id()
            headers.append((b"x-request-id", rid))
        ex.request_id = rid
        ex.path = path
        ex.headers = headers
        ex.te = scan.transfer_encoding

    @staticmethod
    def render_head(ex: Exchange) -> bytes:
        """The request head for upstream, in one join."""
        if ex.plain:
            return b"%b %b HTTP/1.1%b\r\n\r\n" % (ex.method, ex.path, ex.plain)
        extra = b"transfer-encoding: %b\r\n" % ex.te if ex.chunked else b""
        if ex.upgrade:
            extra += b"connection: upgrade\r\nupgrade: %b\r\n" % ex.upgrade
        return b"%b %b HTTP/1.1\r\n%b%b\r\n" % (
            ex.method, ex.path, render_headers(ex.headers), extra
        )

    # === what subclasses provide ===

    def request_head(self, ex: Exchange, scan: HeadScan) -> bytes:
        """The request head to send upstream (raise ``ProxyError`` to refuse the request)."""
        raise TypeError("subclass responsibility")

    def plain_head(
        self, ex: Exchange, head: bytes, host: bytes | None, request_id: bytes | None
    ) -> bytes:
        """The upstream request head for a plain request (``head``: as received, hop-by-hop
        lines cut, no final CRLF); raise ``ProxyError`` to refuse the request."""
        raise TypeError("subclass responsibility")

    def dispatch(self, ex: Exchange) -> None:
        """Find an upstream for ``ex`` and start it there (or answer with an error)."""
        raise TypeError("subclass responsibility")

    def forward(self, ex: Exchange, timeout: float | None) -> None:
        """The concrete and endpoint stages for a routed request (outbound only)."""
        raise TypeError("subclass responsibility")

    def mirror(self, ex: Exchange, policy: MirrorPolicy) -> None:
        """Send a copy of ``ex`` to ``policy``'s backend (outbound only)."""
        raise TypeError("subclass responsibility")

    # === called by the upstream connection ===

    def write(self, data: bytes) -> None:
        held = self.held
        if held is not None:
            held.append(data)
            return
        transport = self.transport
        if transport is not None and not self.closed:
            transport.write(data)

    def hold(self) -> None:
        """Gather writes until ``flush`` (one syscall for a whole parsed chunk)."""
        if self.held is None:
            self.held = []

    def flush(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if held:
                self.write(held[0] if len(held) == 1 else b"".join(held))

    def not_processed(self, ex: Exchange, cause: str) -> bool:
        return False  # the outbound side takes such a request elsewhere (outbound.py)

    def response_head(self, ex: Exchange, head: bytes) -> None:
        response_started(ex)
        self.write(head)
        if self.write_paused and ex.upstream is not None and ex.upstream.transport is not None:
            ex.upstream.transport.pause_reading()

    def response_complete(self, ex: Exchange) -> None:
        if ex.timer is not None or ex.try_timer is not None:
            ex.cancel_timers()
        now = self.last_active_ns = time.monotonic_ns()
        stats = ex.stats
        if stats is not None:
            stats.record(ex.status, now - ex.start_ns)
        # Before the endpoint is let go (a span names it) and before the last bytes held go
        # out (an audit record is written before the caller has the whole answer).
        if ex.stages is not None:
            ex.stages.complete(ex)
        if self.held is not None:
            self.flush()
        endpoint = ex.endpoint
        if endpoint is not None:
            endpoint.pending -= 1
            ex.endpoint = None
        queue = self.queue
        if queue and queue[0] is ex:
            queue.popleft()
        if not ex.keep_alive or not ex.body_done or self.proxy.draining:
            self.close()
            return
        if queue:
            self.dispatch(queue[0])
        if len(queue) <= 1:
            self._resume(PAUSE_PIPELINE)

    def on_response_status(self, ex: Exchange, status: int) -> bool:
        """The final status of the upstream's response is known (nothing sent yet): return
        True to drop this response and try again (a retry policy said so)."""
        return False

    def retry_dropped(self, ex: Exchange) -> None:
        """The response to ``ex`` was dropped for a retry (see ``on_response_status``)."""
        self.respond_error(ex, 502, "upstream-reset", "response dropped")

    def wants(self, ex: Exchange) -> bool:
        """Whether ``ex`` is still waiting here for an upstream to answer it."""
        return not self.closed and bool(self.queue) and self.queue[0] is ex and not (
            ex.response_started
        )

    def upstream_failed(self, ex: Exchange, cause: str, detail: str, *, reused: bool) -> None:
        """The upstream went away before answering: retry a reused idle connection once."""
        if reused and not ex.has_body and not self.closed:
            ex.body = None
            self.retry(ex)
            return
        if ex.endpoint is not None:
            ex.endpoint.penalise(time.monotonic_ns())
        self.respond_error(ex, 502, cause, detail)

    def retry(self, ex: Exchange) -> None:
        """Start ``ex`` again on a fresh connection to the same endpoint."""
        self.respond_error(ex, 502, "upstream-reset", "connection lost before a response")

    def abort_response(self, ex: Exchange, cause: str) -> None:
        """The upstream failed mid-response: the only honest signal left is to cut the stream."""
        self.proxy.metrics.error(self.direction, cause)
        ex.status = 502
        ex.error = cause
        if ex.stats is not None:
            ex.stats.record(502, time.monotonic_ns() - ex.start_ns)
            ex.stats = None
        stages = ex.stages
        if stages is not None:  # the request is over (the connection's loss will not say so)
            ex.stages = None
            stages.complete(ex)
        if self.transport is not None:
            self.transport.abort()

    def start_tunnel(self, ex: Exchange, upstream: UpstreamConnection) -> None:
        """The upstream accepted the upgrade (101): from now on, relay bytes both ways."""
        stats = ex.stats
        if stats is not None:
            stats.record(ex.status, time.monotonic_ns() - ex.start_ns)
        if ex.endpoint is not None:
            ex.endpoint.pending -= 1
            ex.endpoint = None
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        self.upgrading = None
        self.tunnel = upstream
        upstream.tunnel_peer = self
        early = self.early
        self.early = None
        if early and upstream.transport is not None:
            upstream.transport.write(b"".join(early))
        self._resume(PAUSE_BUFFER | PAUSE_PIPELINE | PAUSE_UPGRADE)

    def _hold_early(self, data: bytes) -> None:
        """Keep bytes that followed an upgrade request until the app accepts the upgrade
        (101); any other answer closes the connection and they are dropped unread."""
        if self.early is None:
            self.early = [data]
        else:
            self.early.append(data)

    def pause_for_upstream(self) -> None:
        self._pause(PAUSE_UPSTREAM)

    def resume_for_upstream(self) -> None:
        self._resume(PAUSE_UPSTREAM)

    # === errors and lifecycle ===

    def respond_error(
        self,
        ex: Exchange,
        status: int,
        cause: str,
        detail: str = "",
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Answer ``ex`` with a response the proxy generates, naming the cause."""
        self.proxy.metrics.error(self.direction, cause)
        if self.closed:
            return
        if ex.response_started:
            self.abort_response(ex, cause)
            return
        ex.status = status
        ex.error = cause
        ex.response_started = True
        if not ex.body_done:
            ex.keep_alive = False  # the rest of the request body would be read as a new request
        response = error_response(
            status,
            cause,
            detail,
            request_id=ex.request_id or None,
            close=not ex.keep_alive,
            head_only=ex.is_head,
            headers=headers,
        )
        if ex.stages is not None:  # an observer may count the body
            ex.response_bytes = len(response) - response.find(b"\r\n\r\n") - 4
        self.write(response)
        self.response_complete(ex)

    def respond_whole(self, ex: Exchange, status: int, response: bytes) -> None:
        """Answer ``ex`` with a whole response the proxy makes (not an error: a redirect)."""
        ex.status = status
        ex.response_started = True
        if not ex.body_done:
            ex.keep_alive = False
        self.write(response)
        self.response_complete(ex)

    def attach(self, ex: Exchange, upstream: UpstreamConnection) -> None:
        """``ex`` got its upstream connection: send it (if it is still wanted)."""
        if self.closed or not self.queue or self.queue[0] is not ex:
            upstream.pool.release(upstream)
            return
        upstream.send(ex, self)
        self._resume(PAUSE_BUFFER)

    def close(self) -> None:
        if self.held is not None:
            self.flush()
        if self.transport is not None and not self.closed:
            self.transport.close()

    def refuse(self, status: int, cause: str, detail: str) -> None:
        """A request we cannot parse: answer (if nothing else is being answered) and close."""
        self.proxy.metrics.error(self.direction, cause)
        if self.closed or self.transport is None:
            return
        self.closed = True  # nothing more is read from this connection
        active = self.queue[0] if self.queue else None
        if active is None or not active.response_started:
            for ex in self.queue:
                if ex.upstream is not None:
                    ex.upstream.close()
            self.transport.write(error_response(status, cause, detail, close=True))
            self.transport.close()
        else:
            self.transport.abort()

    def _forward_body(self, ex: Exchange, payload: bytes) -> None:
        replay = ex.replay
        if replay is not None:  # keep a copy while the request may still be retried
            ex.replay_size += len(payload)
            if ex.replay_size > ex.keep_limit:
                ex.replay = None
            else:
                replay.append(payload)
        upstream = ex.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.write(payload)
            return
        if ex.response_started:
            return  # already answered (e.g. an error): the body is discarded
        if ex.body is None:
            ex.body = [payload]
        else:
            ex.body.append(payload)
        ex.body_size += len(payload)
        if ex.body_size > MAX_BUFFERED_BODY:
            self._pause(PAUSE_BUFFER)

    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()
