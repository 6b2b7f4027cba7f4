"""Downstream side of an HTTP/2 proxy hop: a connection accepted by a sidecar listener.

``H2Downstream`` is the server side of an HTTP/2 connection. Each request stream becomes a
``ProxiedStream`` and is routed by the direction's subclass:

- ``H2Outbound``: h2c from the local app on the outbound port (the outbound HTTP/1.1
  connection hands over when the first bytes are the HTTP/2 preface). Routes by
  ``:authority`` (or ``host``) through the same route table, discovery, balancer and metrics
  as HTTP/1.1, to the destination sidecar over h2 with mTLS (one multiplexed connection per
  endpoint); ``x-gossamer-peer-identity`` from the app is removed. Each stream goes through
  the outbound pipeline (``pipeline.outbound``: discovery, the request slots, the logical
  stage) and comes back to ``forward``: a ``StreamPlan`` when a timeout, retries, a rule or
  stream limits apply (``plan``, ``limits``), then an endpoint by ``pipeline.concrete``.
- ``H2Inbound``: h2 over mTLS from another sidecar (TLS ALPN ``h2``), or h2c in plaintext
  while inbound mTLS is PERMISSIVE. Sets ``x-gossamer-peer-identity`` to the caller's SPIFFE
  ID (removing any that came with the request), applies the inbound local rate limit (429 with
  ``retry-after``), and forwards to the local app over h2c.

It is an ``AcceptedConnection`` (not an HTTP/1.1 connection), so the sidecar's connection set,
drain and idle sweep treat it like any other: ``close`` sends GOAWAY and closes once the
streams in flight are done (an idle sweep never cuts live streams; a drain does stop new ones).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import ClassVar

from gossamer.protocol.h2 import binding
from gossamer.protocol.h2.session import (
    CLOSED,
    DATA,
    END,
    HEADERS,
    Event,
    H2Error,
    H2Session,
    Header,
)
from gossamer.protocol.http1 import ProxyError
from gossamer.proxy.accepted import AcceptedConnection
from gossamer.proxy.h2 import H2_PREFACE
from gossamer.proxy.h2.connection import (
    CONNECTION_WINDOW,
    MAX_HEADER_LIST_SIZE,
    SERVER_SETTINGS,
    FlushingConnection,
)
from gossamer.proxy.h2.headers import scan_request, strip_connection_fields
from gossamer.proxy.h2.limits import OVERFLOW, QUEUED
from gossamer.proxy.h2.mirror import fire_mirror
from gossamer.proxy.h2.runtime import runtime_for
from gossamer.proxy.h2.stream import ProxiedStream
from gossamer.proxy.observe.metrics import RouteStats
from gossamer.proxy.pipeline import concrete, inbound, outbound
from gossamer.proxy.pipeline.balancer import EndpointState
from gossamer.proxy.snapshot.table import OutboundService
from gossamer.proxy.state import ProxyState
from gossamer.proxy.tasks import spawn

__all__ = ["H2_PREFACE", "PEER_HEADER", "H2Downstream", "H2Inbound", "H2Outbound"]

log = logging.getLogger("gossamer.proxy.h2")

PEER_HEADER = b"x-gossamer-peer-identity"
CANCEL = 8
ENHANCE_YOUR_CALM = 11
MAX_RESETS = 200  # early client resets per connection and window before it is cut off
RESET_WINDOW_NS = 1_000_000_000
# Bytes a client may send that complete nothing (no headers, no body data, no end): beyond
# the whole connection window and two header blocks only a flood gets here (CONTINUATION
# frames, CVE-2024-28182; PING, SETTINGS, WINDOW_UPDATE, PRIORITY or empty DATA frames).
MAX_IDLE_FRAME_BYTES = CONNECTION_WINDOW + 2 * MAX_HEADER_LIST_SIZE


class H2Downstream(asyncio.Protocol, FlushingConnection, AcceptedConnection):
    """The server side of an HTTP/2 connection; subclasses say where streams go."""

    direction = "outbound"
    drop_headers: ClassVar[frozenset[bytes]] = frozenset({PEER_HEADER})

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.write_paused = False
        self.last_active_ns = time.monotonic_ns()
        self.peer_serial = ""
        self.session = H2Session(
            client=False, settings=SERVER_SETTINGS, connection_window=CONNECTION_WINDOW
        )
        self.streams: dict[int, ProxiedStream] = {}
        self._flush_handle: asyncio.Handle | None = None
        self.runtime = runtime_for(proxy)
        self.grpc_stats = self.runtime.grpc
        self.going_away = False
        self._idle_bytes = 0  # received since the last event (see MAX_IDLE_FRAME_BYTES)
        self._resets = 0  # streams the client reset early, in the current window
        self._reset_window = 0
        # Inside a CONNECT tunnel: the authority every stream goes to (its :authority aside).
        self.pinned: bytes | None = None

    # === asyncio callbacks ===

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.counted()
        self.flush()  # our SETTINGS

    def take_over(self, transport: asyncio.Transport, data: bytes) -> None:
        """Continue a connection that another protocol accepted and counted; ``data`` is what
        it read (starting with the client preface)."""
        self.transport = transport
        self.proxy.connections.add(self)
        transport.set_protocol(self)
        self.flush()
        if data:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        self.last_active_ns = time.monotonic_ns()
        try:
            events = self.session.receive(data)
        except H2Error as exc:
            if exc.code == binding.ERR_FLOODED:
                self._calm("h2-frame-flood", str(exc))
                return
            log.info("%s HTTP/2 session failed: %s", self.direction, exc)
            self.proxy.metrics.error(self.direction, "bad-request")
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        if events:
            self._idle_bytes = 0
        else:
            self._idle_bytes += len(data)
            if self._idle_bytes > MAX_IDLE_FRAME_BYTES:
                self._calm("h2-frame-flood", f"{self._idle_bytes} bytes of frames to no effect")
                return
        self.handle_events(events)
        self.flush()

    def handle_events(self, events: list[Event]) -> None:
        streams = self.streams
        for kind, stream_id, a, b in events:
            if kind == DATA:
                stream = streams.get(stream_id)
                if stream is not None:
                    stream.request_data(a)
                else:
                    self.session.consume(stream_id, len(a))
            elif kind == HEADERS:
                stream = streams.get(stream_id)
                if stream is None:
                    self._start(stream_id, a, b)
                else:  # trailers (nghttp2 insists they end the stream), filtered as headers
                    drop = self.drop_headers
                    kept = [(n, v) for n, v in a if n not in drop and n[:1] != b":"]
                    stream.request_end(strip_connection_fields(kept))
            elif kind == END:
                stream = streams.get(stream_id)
                if stream is not None:
                    stream.request_end()
            elif kind == CLOSED:
                stream = streams.pop(stream_id, None)
                if stream is not None:
                    if a and not stream.resp_ended and self._reset_flood():
                        return
                    stream.downstream_closed(a, b)

    def _reset_flood(self) -> bool:
        """Count a stream the client reset before its answer ended; past ``MAX_RESETS`` in
        ``RESET_WINDOW_NS``, a rapid-reset flood (CVE-2023-44487): GOAWAY ENHANCE_YOUR_CALM
        and close, whatever the libnghttp2 version. True when the connection was closed."""
        now = time.monotonic_ns()
        if now - self._reset_window > RESET_WINDOW_NS:
            self._reset_window = now
            self._resets = 0
        self._resets += 1
        if self._resets <= MAX_RESETS:
            return False
        self._calm("h2-reset-flood", f"{self._resets} streams reset within a second")
        return True

    def _calm(self, cause: str, detail: str) -> None:
        """An abusive client: GOAWAY ENHANCE_YOUR_CALM, counted as ``cause``, and close."""
        log.warning("%s HTTP/2 %s: %s; GOAWAY", self.direction, cause, detail)
        self.proxy.metrics.error(self.direction, cause)
        self.session.goaway(ENHANCE_YOUR_CALM)
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.uncounted()
        self.cancel_flush()
        self.session.close()
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.downstream_closed(CANCEL, None)
        self.transport = None

    # === AcceptedConnection: the drain and the idle sweep ===

    def busy(self) -> bool:
        return bool(self.streams)

    def sweep(
        self, now_ns: int, head_ns: int, idle_ns: int, body_ns: int, stream_ns: int
    ) -> None:
        streams = self.streams
        if not streams:
            if now_ns - self.last_active_ns > idle_ns:
                self.close()
            return
        for stream in list(streams.values()):
            if stream.moved != stream.moved_mark:
                stream.moved_mark = stream.moved
                stream.moved_since = now_ns
                continue
            still = now_ns - stream.moved_since
            if stream.done:
                if still > body_ns:
                    stream.reset_held()
            elif not stream.req_ended and not stream.grpc:  # gRPC streams idle at will
                if still > body_ns:
                    stream.stalled(408, "request-body-timeout", "the request body stopped arriving")
            elif still > stream_ns:
                stream.stalled(504, "upstream-idle-timeout", "no bytes either way for too long")

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.flush()

    def close(self) -> None:
        """GOAWAY, then close when the streams in flight are done."""
        transport = self.transport
        if transport is None or self.closed:
            return
        if self.streams and not self.proxy.draining:
            self.last_active_ns = time.monotonic_ns()  # idle sweep: live streams are not idle
            return
        if not self.going_away:
            self.going_away = True
            self.session.goaway()
        self.flush()
        if not self.streams:
            transport.close()

    # === streams ===

    def _start(self, stream_id: int, headers: list[Header], ended: bool) -> None:
        scan = scan_request(headers, self.drop_headers)
        kept = scan.kept
        rid = scan.request_id
        if rid is None:
            rid = self.proxy.new_request_id()
            kept.append((b"x-request-id", rid))
        self.add_headers(kept)
        stream = ProxiedStream(
            self,
            stream_id,
            kept,
            authority=scan.authority if self.pinned is None else self.pinned,
            request_id=rid,
            grpc=scan.grpc,
            is_head=scan.method == b"HEAD",
            ended=ended,
        )
        stream.method = scan.method
        stream.path = scan.path
        stream.scheme = scan.scheme
        self.streams[stream_id] = stream
        self.route(stream)

    def add_headers(self, headers: list[Header]) -> None:
        """Direction-specific request headers (the inbound side names the caller)."""

    def route(self, stream: ProxiedStream) -> None:
        """Find an upstream connection for ``stream`` and attach it (or answer an error)."""
        raise TypeError("subclass responsibility")

    def reroute(self, stream: ProxiedStream, avoid: EndpointState | None = None) -> None:
        """Send ``stream`` again, preferably not to ``avoid`` (nothing of it was forwarded
        yet, or a retry): the endpoint stage only, the route already chosen."""
        self.route(stream)

    def forward(self, stream: ProxiedStream, timeout: float | None) -> None:
        """The concrete and endpoint stages for a routed stream (outbound only)."""
        raise TypeError("subclass responsibility")

    def fire_mirror(self, stream: ProxiedStream) -> None:
        """Send the mirror copy ``stream``'s plan holds (outbound only)."""


class H2Outbound(H2Downstream):
    """h2c from the local app to mesh services."""

    direction = "outbound"

    def route(self, stream: ProxiedStream) -> None:
        outbound.start(stream, self.proxy)

    def forward(self, stream: ProxiedStream, timeout: float | None) -> None:
        """After the logical stage: a plan when anything needs one (the whole stream's
        clock, the backend's stream slots), then an endpoint."""
        backend = stream.service
        assert backend is not None
        limits = backend.policy.limits
        plan = stream.plan
        if plan is None and (
            timeout is not None or stream.retry is not None or stream.rule is not None
            or not limits.unlimited
        ):  # fmt: skip
            plan = stream.new_plan()
        stream.tries = 1
        if plan is not None and timeout is not None:
            plan.timer = asyncio.get_running_loop().call_later(timeout, plan.timed_out, stream)
        if limits.max_connections:
            assert plan is not None
            account = self.runtime.account(backend.key)
            verdict = account.admit(stream, limits)
            if verdict == OVERFLOW:
                stream.respond_error(
                    503, "overflow", f"{backend.key}: stream and pending limits reached"
                )
                return
            plan.account = account
            if verdict == QUEUED:
                plan.queued = True
                return
        self.send_to(stream, backend, stream.subset)

    def fire_mirror(self, stream: ProxiedStream) -> None:
        fire_mirror(stream)

    def reroute(self, stream: ProxiedStream, avoid: EndpointState | None = None) -> None:
        service = stream.service
        if service is None:
            self.route(stream)
            return
        self.send_to(stream, service, stream.subset, avoid)

    def send_to(
        self,
        stream: ProxiedStream,
        service: OutboundService,
        subset: tuple[tuple[str, str], ...] = (),
        avoid: EndpointState | None = None,
        attempt: int = 0,
    ) -> None:
        """Pick an endpoint of ``service`` (within ``subset``, preferably not ``avoid``) and
        attach ``stream`` to its connection, opening one if needed."""
        stream.stats = service.stats
        stream.service = service
        endpoint = concrete.pick(service, subset, stream, avoid)  # skips ejected outliers
        if endpoint is None:
            cause, detail = concrete.no_endpoint(service, subset)
            stream.respond_error(503, cause, detail)
            return
        endpoint.pending += 1
        stream.endpoint = endpoint
        key = endpoint.pool_key
        runtime = self.runtime
        plain = service.plaintext(stream.authority, stream.scheme)
        conn = (runtime.egress_pool if plain else runtime.outbound_pool).take(key)
        if conn is not None:
            stream.attach(conn)
        else:
            spawn(
                self._connect(stream, service, key, subset, attempt),
                name=f"h2 connect {service.key}",
            )

    async def _connect(
        self,
        stream: ProxiedStream,
        service: OutboundService,
        key: tuple[str, int],
        subset: tuple[tuple[str, str], ...],
        attempt: int,
    ) -> None:
        runtime = self.runtime
        plain = service.plaintext(stream.authority, stream.scheme)
        pool = runtime.egress_pool if plain else runtime.outbound_pool
        try:
            conn = await pool.connect(key, sni=service.sni, identity=service.identity)
        except ProxyError as exc:
            endpoint = stream.endpoint
            if endpoint is not None:
                endpoint.penalise(time.monotonic_ns())
                service.record_outcome(endpoint, "connect-failure")
            stream.release()
            if not stream.wanted():
                return
            if (
                exc.cause == "connect-failed"
                and attempt < concrete.MAX_CONNECT_ATTEMPTS - 1
                and len(service.balancer.endpoints) > 1
            ):
                # Nothing was sent: try another endpoint.
                self.send_to(stream, service, subset, endpoint, attempt + 1)
                return
            plan = stream.plan
            if (
                plan is not None
                and exc.cause == "connect-failed"
                and plan.failed(stream, exc.cause, endpoint)
            ):
                return
            stream.respond_error(exc.status, exc.cause, exc.detail)
            return
        stream.attach(conn)


class H2Inbound(H2Downstream):
    """h2 over mTLS from other sidecars to the local app (over h2c)."""

    direction = "inbound"

    def __init__(self, proxy: ProxyState) -> None:
        super().__init__(proxy)
        self.peer = b""
        self.stats: RouteStats | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peercert = transport.get_extra_info("peercert")
        peer, self.stats = inbound.caller(self.proxy, peercert)
        self.peer = peer.encode()
        super().connection_made(transport)
        self.peer_serial = inbound.refuse_revoked(self.proxy, peercert, transport)

    def add_headers(self, headers: list[Header]) -> None:
        if self.peer:
            headers.append((PEER_HEADER, self.peer))

    def route(self, stream: ProxiedStream) -> None:
        stream.stats = self.stats
        stream.peer = self.peer
        if not inbound.admit(stream, self.proxy.table):
            return  # answered by a stage or the rate limit
        self.to_app(stream)

    def reroute(self, stream: ProxiedStream, avoid: EndpointState | None = None) -> None:
        """The app refused the stream before seeing it: send it again, admitted already (its
        request slots ran once, and run once)."""
        self.to_app(stream)

    def to_app(self, stream: ProxiedStream) -> None:
        """Attach an admitted ``stream`` to a connection to the local app."""
        app = self.proxy.settings.workload.app
        if app is None:
            stream.respond_error(503, "no-local-app", "this sidecar has no local application")
            return
        key = (app.host, app.port)
        conn = self.runtime.app_pool.take(key)
        if conn is not None:
            stream.attach(conn)
        else:
            spawn(self._connect(stream, key), name="h2 connect app")

    async def _connect(self, stream: ProxiedStream, key: tuple[str, int]) -> None:
        try:
            conn = await self.runtime.app_pool.connect(key)
        except ProxyError as exc:
            # No app saw the request: the caller's sidecar may take it elsewhere (retries.py).
            cause = "app-unreachable" if exc.cause == "connect-failed" else exc.cause
            stream.respond_error(exc.status, cause, f"local app {exc.detail}")
            return
        stream.attach(conn)
