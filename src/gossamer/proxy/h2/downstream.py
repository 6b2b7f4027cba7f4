"""Downstream side of an HTTP/2 proxy hop: a connection accepted by a sidecar listener.

``H2Downstream`` is the server side of an HTTP/2 connection. Each request stream becomes a
``ProxiedStream`` and is routed by the direction's subclass:

- ``H2Outbound``: h2c from the local app on the outbound port (the outbound HTTP/1.1
  connection hands over when the first bytes are the HTTP/2 preface). Routes by
  ``:authority`` (or ``host``) through the same route table, discovery, balancer and metrics
  as HTTP/1.1, to the destination sidecar over h2 with mTLS (one multiplexed connection per
  endpoint); ``x-gossamer-peer-identity`` from the app is removed. A service with HTTP routes
  or a traffic policy (timeout, retries, limits) sends its streams through ``plan.route``
  first (rules, filters, splits, retries, timeouts, mirroring; ``limits`` for circuit
  breaking); the others go straight to the balancer, which skips ejected outliers and hashes
  on the policy's header or cookie for consistent hashing.
- ``H2Inbound``: h2 over mTLS from another sidecar (TLS ALPN ``h2``), or h2c in plaintext
  while inbound mTLS is PERMISSIVE. Sets ``x-gossamer-peer-identity`` to the caller's SPIFFE
  ID (removing any that came with the request), applies the inbound local rate limit (429 with
  ``retry-after``), and forwards to the local app over h2c.

It is a ``DownstreamConnection`` so the sidecar's connection set, drain and idle sweep treat it
like any other: ``close`` sends GOAWAY and closes once the streams in flight are done (an idle
sweep never cuts live streams; a drain does stop new ones).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import ClassVar

from gossamer.identity.spiffe import SpiffeId, peer_uri_sans
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
from gossamer.proxy.h2 import H2_PREFACE
from gossamer.proxy.h2.connection import CONNECTION_WINDOW, SERVER_SETTINGS, FlushingConnection
from gossamer.proxy.h2.headers import scan_request
from gossamer.proxy.h2.plan import needs_plan
from gossamer.proxy.h2.plan import route as plan_route
from gossamer.proxy.h2.runtime import runtime_for
from gossamer.proxy.h2.stream import ProxiedStream
from gossamer.proxy.http1.downstream import DownstreamConnection
from gossamer.proxy.observe.metrics import RouteStats
from gossamer.proxy.pipeline.balancer import EndpointState
from gossamer.proxy.snapshot.service_policy import ServicePolicy
from gossamer.proxy.snapshot.table import OutboundService, service_key
from gossamer.proxy.state import ProxyState
from gossamer.proxy.tasks import spawn

__all__ = ["H2_PREFACE", "PEER_HEADER", "H2Downstream", "H2Inbound", "H2Outbound"]

log = logging.getLogger("gossamer.proxy.h2")

PEER_HEADER = b"x-gossamer-peer-identity"
CANCEL = 8
MAX_CONNECT_ATTEMPTS = 3


class H2Downstream(DownstreamConnection, FlushingConnection):
    """The server side of an HTTP/2 connection; subclasses say where streams go."""

    drop_headers: ClassVar[frozenset[bytes]] = frozenset({PEER_HEADER})

    def __init__(self, proxy: ProxyState) -> None:
        super().__init__(proxy)
        self.session = H2Session(
            client=False, settings=SERVER_SETTINGS, connection_window=CONNECTION_WINDOW
        )
        self.streams: dict[int, ProxiedStream] = {}
        self._flush_handle: asyncio.Handle | None = None
        self.runtime = runtime_for(proxy)
        self.grpc_stats = self.runtime.grpc
        self.going_away = False

    def flush(self) -> None:
        """Write the session's output (``FlushingConnection``'s flush, not the HTTP/1.1 held
        writes of ``DownstreamConnection``, which an HTTP/2 connection never holds)."""
        FlushingConnection.flush(self)

    # === asyncio callbacks ===

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
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
            log.info("%s HTTP/2 session failed: %s", self.direction, exc)
            self.proxy.metrics.error(self.direction, "bad-request")
            self.flush()
            if self.transport is not None:
                self.transport.close()
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
                else:
                    stream.request_end(a)  # trailers (nghttp2 insists they end the stream)
            elif kind == END:
                stream = streams.get(stream_id)
                if stream is not None:
                    stream.request_end()
            elif kind == CLOSED:
                stream = streams.pop(stream_id, None)
                if stream is not None:
                    stream.downstream_closed(a, b)

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_flush()
        self.session.close()
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.downstream_closed(CANCEL, None)
        super().connection_lost(exc)

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
            authority=scan.authority,
            request_id=rid,
            grpc=scan.grpc,
            is_head=scan.method == b"HEAD",
            ended=ended,
        )
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


class H2Outbound(H2Downstream):
    """h2c from the local app to mesh services."""

    direction = "outbound"

    def route(self, stream: ProxiedStream) -> None:
        table = self.proxy.table
        if table is None:
            stream.respond_error(
                503, "proxy-not-ready", "no configuration from the control plane yet"
            )
            return
        service = table.resolve(stream.authority)
        if service is not None:
            if needs_plan(service):
                plan_route(self, stream, service)
            else:
                self.send_to(stream, service)
            return
        host = stream.authority.decode("latin-1")
        key = service_key(host, table.namespace)
        if key is None or key in table.unknown:
            stream.respond_error(404, "unknown-service", f"{host} is not a mesh service")
            return
        spawn(self._discover(stream, key), name=f"discover {key}")

    async def _discover(self, stream: ProxiedStream, key: str) -> None:
        try:
            service = await self.proxy.discover(key)
        except ProxyError as exc:
            stream.respond_error(exc.status, exc.cause, exc.detail)
            return
        if not stream.wanted():
            return
        if service is None:
            stream.respond_error(404, "unknown-service", f"{key} is not a mesh service")
        else:
            self.route_to(stream, service)

    def route_to(self, stream: ProxiedStream, service: OutboundService) -> None:
        """The route stage when the service has routes or a policy, else the balancer."""
        if needs_plan(service):
            plan_route(self, stream, service)
        else:
            self.send_to(stream, service)

    def reroute(self, stream: ProxiedStream, avoid: EndpointState | None = None) -> None:
        service = stream.service
        if service is None:
            self.route(stream)
            return
        plan = stream.plan
        self.send_to(stream, service, plan.subset if plan is not None else (), avoid)

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
        policy = service.policy
        hash_key = None
        if policy.lb_type == "ConsistentHash":
            hash_key = _hash_key(stream.headers, policy)
        endpoint = service.pick(subset, hash_key)  # skips ejected outliers
        if avoid is not None and endpoint is avoid:
            endpoint = _another(service, subset, avoid) or endpoint  # a retry: elsewhere
        if endpoint is None:
            stream.respond_error(
                503, "no-healthy-endpoints", f"{service.key} has no healthy endpoints"
            )
            return
        endpoint.pending += 1
        stream.endpoint = endpoint
        key = endpoint.pool_key
        conn = self.runtime.outbound_pool.take(key)
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
        try:
            conn = await self.runtime.outbound_pool.connect(
                key, sni=service.sni, identity=service.identity
            )
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
                and attempt < MAX_CONNECT_ATTEMPTS - 1
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


def _another(
    service: OutboundService, subset: tuple[tuple[str, str], ...], avoid: EndpointState
) -> EndpointState | None:
    """A live endpoint of ``service`` within ``subset`` other than ``avoid``, the least busy
    (a balancer's second pick can return the same one: power of two choices over two
    endpoints compares the same pair)."""
    best = None
    for endpoint in service.balancer.endpoints:  # not ejected
        if endpoint is avoid or not all(endpoint.labels.get(k) == v for k, v in subset):
            continue
        if best is None or endpoint.pending < best.pending:
            best = endpoint
    return best


def _hash_key(headers: list[Header], policy: ServicePolicy) -> bytes | None:
    """The consistent-hash key of a request: the policy's header, else its cookie."""
    name = policy.hash_header
    if name is not None:
        for field, value in headers:
            if field == name:
                return value
    cookie = policy.hash_cookie
    if cookie is not None:
        prefix = cookie + b"="
        for field, value in headers:
            if field == b"cookie":
                for part in value.split(b";"):
                    part = part.strip()
                    if part.startswith(prefix):
                        return part[len(prefix) :]
    return None


class H2Inbound(H2Downstream):
    """h2 over mTLS from other sidecars to the local app (over h2c)."""

    direction = "inbound"

    def __init__(self, proxy: ProxyState) -> None:
        super().__init__(proxy)
        self.peer = b""
        self.stats: RouteStats | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sans = peer_uri_sans(transport.get_extra_info("peercert"))
        peer = sans[0] if sans else ""
        self.peer = peer.encode()
        try:
            source = SpiffeId.parse(peer).service_account if peer else "unknown"
        except ValueError:
            source = "unknown"
        self.stats = self.proxy.metrics.route(
            "inbound", source, self.proxy.settings.workload.service, peer or "none"
        )
        super().connection_made(transport)

    def add_headers(self, headers: list[Header]) -> None:
        if self.peer:
            headers.append((PEER_HEADER, self.peer))

    def route(self, stream: ProxiedStream) -> None:
        stream.stats = self.stats
        table = self.proxy.table
        limiter = table.rate_limiter if table is not None else None
        if limiter is not None:
            wait = limiter.check(self.peer.decode(), time.monotonic())
            if wait > 0:
                retry_after = (b"retry-after", b"%d" % math.ceil(wait))
                stream.respond_error(429, "rate-limited", "local rate limit", (retry_after,))
                return
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
            stream.respond_error(exc.status, exc.cause, f"local app {exc.detail}")
            return
        stream.attach(conn)
