"""Opaque TCP through the mesh: upstream listeners, TCP routes with drain, and the inbound side.

Outbound (explicit mode): for every upstream in the settings (``GOSSAMER_PROXY_UPSTREAMS=
db=127.0.0.1:15432``) the sidecar listens locally. A connection there is routed when it
arrives: the service's TCP route picks a backend service by weight (no route: the service
itself), its balancer picks an endpoint, and the sidecar opens mTLS to that endpoint offering
ALPN ``gossamer-tcp`` and checking the peer's SPIFFE ID. Bytes then flow through a ``Relay``.

Route changes: every outbound relay is filed under the service it was opened for. When a new
snapshot is installed, relays whose backend the service's route no longer wants get a drain
deadline (the new route's ``drain_ms``); they keep flowing until they close or the deadline
passes, then they are closed. New connections see the new route at once, because routing reads
the route table in force when they arrive. A route that wants the backend again before the
deadline cancels the drain.

Inbound: the inbound listener hands over TLS connections whose handshake would negotiate ALPN
``gossamer-tcp`` (``claim``, from a peek at the ClientHello) before the handshake, so that the
sidecar runs that TLS itself and the stream can half-close. It relays the bytes to its
local app when its inbound ports declare protocol ``tcp``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gossamer.identity.spiffe import SpiffeId
from gossamer.protocol.http1 import ProxyError
from gossamer.proxy.local_peers import foreign_user
from gossamer.proxy.loop_calls import remove_reader
from gossamer.proxy.observe.metrics import TcpStats
from gossamer.proxy.pipeline.audit import connection_row
from gossamer.proxy.pipeline.balancer import EndpointState
from gossamer.proxy.process.settings import Address
from gossamer.proxy.snapshot.authorization import Attributes, Authorization, Decision
from gossamer.proxy.snapshot.tcp_rules import TcpRoute, still_routed
from gossamer.proxy.tasks import spawn
from gossamer.proxy.tcp.relay import Relay, RelayBuffers
from gossamer.proxy.tcp.tls_stream import (
    TCP_ALPN,
    TlsFailure,
    TlsStream,
    offered_alpn,
)

if TYPE_CHECKING:
    from gossamer.identity.credentials import TlsContexts
    from gossamer.proxy.snapshot.table import OutboundService
    from gossamer.proxy.state import ProxyState

__all__ = ["Fallback", "TcpProxy", "TcpSnapshotHandler"]

log = logging.getLogger("gossamer.proxy")

CONNECT_TIMEOUT = 5.0
MAX_CONNECT_ATTEMPTS = 3
PEEK_LIMIT = 16 * 1024 + 5  # one TLS record: a whole ClientHello
HELLO_TIMEOUT = 10.0
Fallback = Callable[[socket.socket], Coroutine[Any, Any, None]]
_TCP_ALPN = TCP_ALPN.encode()
_HTTP_ALPN = frozenset({b"h2", b"http/1.1"})
# The status a refused CONNECT tunnel is answered with, by cause (otherwise 502).
_TUNNEL_STATUS = {
    "unknown-service": 404,
    "no-healthy-endpoints": 503,
    "discovery-timeout": 503,
    "proxy-not-ready": 503,
}


class _Refused(Exception):
    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail


class TcpProxy:
    """The TCP side of one sidecar (see the module docstring)."""

    def __init__(
        self,
        state: ProxyState,
        credentials: TlsContexts,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.state = state
        self.settings = state.settings
        self.metrics = state.metrics
        self.buffers = RelayBuffers()
        self._credentials = credentials
        self._rng = rng or random.Random()
        self._source = self.settings.workload.service
        self._namespace = self.settings.workload.namespace
        self._servers: list[asyncio.Server] = []
        self.addresses: dict[str, Address] = {}
        self._relays: set[Relay] = set()
        self._by_service: dict[str, set[Relay]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._table: Any = None
        self._ports_table: Any = None
        self._tcp_inbound = False
        self._tcp_port = 0  # the workload's tcp port (the first one it declares)

    # === lifecycle ===

    async def start(self) -> dict[str, Address]:
        """Listen for every upstream in the settings; return upstream name → bound address."""
        loop = asyncio.get_running_loop()
        reuse_port = self.settings.listen.workers > 1
        for upstream in self.settings.listen.upstreams:
            key = self._key(upstream.service)
            server = await loop.create_server(
                lambda key=key: self._accept_outbound(key),
                upstream.address.host,
                upstream.address.port,
                reuse_address=True,
                reuse_port=reuse_port or None,
                backlog=1024,
            )
            self._servers.append(server)
            self.addresses[upstream.service] = Address.bound(server)
        return dict(self.addresses)

    def subscriptions(self) -> list[str]:
        """The upstream services, as ``name.namespace`` (this proxy's snapshot must hold them)."""
        return sorted(self._key(u.service) for u in self.settings.listen.upstreams)

    def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()

    async def drain(self, timeout: float) -> None:
        """Let open relays finish for up to ``timeout`` seconds, then abort the rest."""
        self.stop_accepting()
        if self._relays:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                log.warning("%d TCP connections open at the drain deadline", len(self._relays))
        for relay in list(self._relays):
            relay.abort()

    @property
    def open_relays(self) -> int:
        return len(self._relays)

    # === outbound ===

    def _key(self, name: str) -> str:
        return name if "." in name else f"{name}.{self._namespace}"

    def _new_relay(self, stats: TcpStats) -> Relay:
        relay = Relay(stats, self.buffers, self._relay_done)
        self._relays.add(relay)
        self.state.tcp_open = len(self._relays)
        self._idle.clear()
        return relay

    def _accept_outbound(self, key: str) -> asyncio.BaseProtocol:
        if self._full("outbound"):
            return _Refuse()
        relay = self._new_relay(TcpStats(""))  # counted under its backend once routed
        relay.service_key = key
        spawn(self._route(relay, key), name=f"tcp connect {key}")
        return relay.down

    async def _service(self, key: str) -> OutboundService:
        table = self.state.table
        service = table.services.get(key) if table is not None else None
        if service is not None:
            return service
        if table is not None and key in table.unknown:
            raise _Refused("unknown-service", f"{key} is not a mesh service")
        try:
            found = await self.state.discover(key)
        except ProxyError as exc:
            raise _Refused(exc.cause, exc.detail) from None
        if found is None:
            raise _Refused("unknown-service", f"{key} is not a mesh service")
        return found

    async def _route(self, relay: Relay, key: str) -> None:
        allowed = self.state.local_uids
        if allowed is not None:  # only the app's user may act as the workload
            refusal = foreign_user(allowed, relay.down.transport)
            if refusal:
                log.info("refusing a local connection to a TCP upstream port: %s", refusal)
                self.metrics.error("outbound", "local-peer-refused")
                relay.close()
                return
        try:
            await self._connect_upstream(relay, key)
        except _Refused as exc:
            self._refuse(relay, exc.cause, f"{key}: {exc.detail}")

    async def _connect_upstream(self, relay: Relay, key: str) -> None:
        """Route ``relay`` (for service ``key``) and connect its upstream end: the TCP route's
        backend, an endpoint by its balancer, mTLS offering ``gossamer-tcp`` and checking the
        backend's SPIFFE ID, another endpoint after a refused connection; ``_Refused`` says
        why none could be opened. Returns early, unattached, when the relay closed meanwhile."""
        failure: TlsFailure | None = None
        for _attempt in range(MAX_CONNECT_ATTEMPTS):
            service = await self._service(key)
            route: TcpRoute | None = service.tcp_route
            backend_key = route.pick(self._rng) if route is not None else service.key
            table = self.state.table
            backend = table.services.get(backend_key) if table is not None else None
            if backend is None:
                raise _Refused("unknown-service", f"route backend {backend_key} is unknown")
            endpoint = backend.pick()
            if endpoint is None:
                raise _Refused("no-healthy-endpoints", f"{backend.key} has no endpoints")
            try:
                context = self._client_context()
            except TlsFailure as exc:  # no certificate of our own (yet)
                raise _Refused(exc.cause, exc.detail) from None
            started = time.monotonic_ns()
            try:
                stream = await self._open(context, backend, endpoint)
            except TlsFailure as exc:
                endpoint.penalise(time.monotonic_ns())
                failure = exc
                if relay.closed:
                    return
                if exc.cause != "connect-failed":
                    break
                continue
            now = time.monotonic_ns()
            endpoint.observe(now - started, now)
            if relay.closed:
                stream.close()
                return
            table = self.state.table
            current = table.services.get(key) if table is not None else None
            if current is None or not still_routed(current.tcp_route, key, backend.key):
                stream.close()  # the route changed while we connected: route again
                continue
            self._attach(relay, key, current.tcp_route, backend, endpoint, stream)
            return
        cause = failure.cause if failure is not None else "connect-failed"
        detail = failure.detail if failure is not None else "route changed repeatedly"
        raise _Refused(cause, detail)

    # === CONNECT tunnels (http1.connect) ===

    async def tunnel_to_service(self, key: str) -> Relay:
        """For a CONNECT to a ``tcp`` port of service ``key``: a relay whose upstream end is
        connected as for a connection to an upstream listener (``_connect_upstream``) and
        whose downstream end waits for the client's connection (``Relay.take_downstream``);
        ``ProxyError`` naming why when none could be opened."""
        relay = self._tunnel_relay(TcpStats(""))
        relay.service_key = key
        try:
            await self._connect_upstream(relay, key)
        except _Refused as exc:
            self._refuse(relay, exc.cause, f"{key}: {exc.detail}")
            raise ProxyError(_TUNNEL_STATUS.get(exc.cause, 502), exc.cause,
                             f"{key}: {exc.detail}") from None  # fmt: skip
        return relay

    async def tunnel_to_host(self, host: str, addresses: Sequence[tuple[str, int]]) -> Relay:
        """For a CONNECT to a host outside the mesh that the egress policy lets out: a relay
        whose upstream end is a plain TCP connection to the first of ``addresses`` (the host
        itself, its name resolved here, or its ``Egress``'s endpoints) that accepts, counted
        under ``egress:<host>``; ``ProxyError`` 502 when none does."""
        relay = self._tunnel_relay(self.metrics.tcp("outbound", self._source, f"egress:{host}"))
        relay.service_key = f"egress:{host}"
        loop = asyncio.get_running_loop()
        reasons = []
        for address, port in addresses:
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda: relay.up, address, port), CONNECT_TIMEOUT
                )
                return relay
            except (OSError, TimeoutError) as exc:
                why = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
                reasons.append(f"{address}:{port}: {why}")
        relay.stats.connect_failures += 1
        self.metrics.error("outbound", "connect-failed")
        relay.close()
        raise ProxyError(502, "connect-failed", f"{host}: " + "; ".join(reasons))

    def _tunnel_relay(self, stats: TcpStats) -> Relay:
        if self._full("outbound"):
            raise ProxyError(503, "connection-overflow", "the sidecar's connection cap")
        return self._new_relay(stats)

    def _refuse(self, relay: Relay, cause: str, detail: str) -> None:
        name = relay.service_key.partition(".")[0]
        relay.set_stats(self.metrics.tcp("outbound", self._source, name))
        relay.stats.connect_failures += 1
        relay.cause = cause
        self.metrics.error("outbound", cause)
        log.info("TCP connection refused (%s): %s", cause, detail)
        relay.close()

    def _client_context(self) -> ssl.SSLContext:
        """The credentials' ``gossamer-tcp`` client context; ``TlsFailure`` without one."""
        context = self._credentials.alpn_client_context(TCP_ALPN)
        if context is None:
            raise TlsFailure("connect-failed", "no workload certificate yet")
        return context

    async def _open(
        self, context: ssl.SSLContext, backend: OutboundService, endpoint: EndpointState
    ) -> TlsStream:
        loop = asyncio.get_running_loop()
        stream = TlsStream(
            context, self.buffers, server_side=False, server_hostname=backend.sni,
            expect_identity=backend.identity,
        )
        addr = endpoint.addr
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: stream, addr.host, addr.port), CONNECT_TIMEOUT
            )
        except TimeoutError:
            raise TlsFailure("connect-failed", f"{addr}: timed out") from None
        except OSError as exc:
            raise TlsFailure("connect-failed", f"{addr}: {exc.strerror or exc}") from None
        await stream.ready
        table = self.state.table
        if table is not None and stream.peer_serial in table.revoked:
            stream.abort()
            raise TlsFailure("upstream-revoked", f"{addr}: its certificate is revoked")
        return stream

    def _attach(
        self,
        relay: Relay,
        key: str,
        route: TcpRoute | None,
        backend: OutboundService,
        endpoint: EndpointState,
        stream: TlsStream,
    ) -> None:
        relay.set_stats(self.metrics.tcp("outbound", self._source, backend.name))
        relay.backend_key = backend.key
        relay.peer_identity = backend.identity
        relay.route_drain = route.drain if route is not None else 0.0
        relay.endpoint = endpoint
        endpoint.pending += 1
        self._by_service.setdefault(key, set()).add(relay)
        stream.attach(relay.up)

    def _full(self, direction: str) -> bool:
        """Whether the sidecar's connection cap is reached (then a new relay is refused)."""
        if not self.state.full():
            return False
        self.metrics.error(direction, "connection-overflow")
        return True

    def _relay_done(self, relay: Relay) -> None:
        if self.state.access_log is not None:
            self._log(relay)
        spool = self.state.audit_spool
        if relay.audit is not None and spool is not None:
            workload = (self.settings.workload.namespace, self.settings.workload.service)
            spool.append(connection_row(relay.started_ns, relay.peer_identity,
                                        relay.down.moved, relay.up.moved, relay.audit,
                                        workload))  # fmt: skip
        self._relays.discard(relay)
        self.state.tcp_open = len(self._relays)
        group = self._by_service.get(relay.service_key)
        if group is not None:
            group.discard(relay)
            if not group:
                del self._by_service[relay.service_key]
        endpoint = relay.endpoint
        if endpoint is not None:
            relay.endpoint = None
            endpoint.pending -= 1
        if not self._relays:
            self._idle.set()

    def _log(self, relay: Relay) -> None:
        """The connection's access log line (docs/internals.md §16): protocol ``tcp``."""
        writer = self.state.access_log
        if writer is None:
            return
        elapsed = time.time_ns() - relay.started_ns
        if relay.direction == "inbound":
            app = self.settings.workload.tcp_app or self.settings.workload.app
            service = self.settings.workload.service
            upstream = f"{app.host}:{app.port}" if app is not None else ""
        else:
            service = (relay.backend_key or relay.service_key).partition(".")[0]
            endpoint = relay.endpoint
            upstream = f"{endpoint.addr.host}:{endpoint.addr.port}" if endpoint is not None else ""
        writer.add((
            relay.started_ns, relay.direction, "tcp", b"", relay.service_key.encode(), b"", 0,
            relay.cause, relay.down.moved, relay.up.moved, elapsed, service, upstream,
            relay.peer_identity, b"", None, None,
        ))  # fmt: skip

    # === route changes ===

    def table_changed(self) -> None:
        """Apply the route table now in force to open relays (see the module docstring)."""
        table = self.state.table
        if table is None or table is self._table:
            return
        self._table = table
        if table.revoked:
            for relay in [r for r in self._relays if _revoked_peer(r, table.revoked)]:
                self.metrics.error("inbound", "revoked-peer")
                relay.close()
        for key, relays in self._by_service.items():
            service = table.services.get(key)
            route = service.tcp_route if service is not None else None
            draining: list[Relay] = []
            for relay in relays:
                if relay.closed:
                    continue
                if still_routed(route, key, relay.backend_key):
                    relay.cancel_drain()
                    if route is not None:
                        relay.route_drain = route.drain
                elif relay.drain_timer is None:
                    seconds = route.drain if route is not None else relay.route_drain
                    relay.start_drain(seconds, self._drain_expired)
                    draining.append(relay)
            if draining:
                targets = sorted({r.backend_key for r in draining})
                log.info(
                    "TCP route of %s changed: %d connections to %s close within %.1f s",
                    key, len(draining), ", ".join(targets),
                    route.drain if route is not None else draining[0].route_drain,
                )

    def _drain_expired(self, relay: Relay) -> None:
        relay.drain_timer = None
        if relay.closed:
            return
        relay.stats.drained += 1
        relay.cause = "route-drained"
        relay.close()

    # === inbound ===

    def claim(self, conn: socket.socket, fallback: Fallback) -> bool:
        """Take an accepted socket whose TLS ClientHello offers ``gossamer-tcp``.

        False leaves the socket to the caller (another hello). When the hello has not fully
        arrived yet, the socket is taken and waited on; if it turns out not to offer
        ``gossamer-tcp``, ``fallback(conn)`` gets it back.
        """
        verdict, _needed = self._peek_hello(conn)
        if verdict is False:
            return False
        if verdict:
            spawn(self._accept_inbound(conn), name="inbound tcp handshake")
        else:
            spawn(self._await_hello(conn, fallback), name="inbound client hello")
        return True

    @staticmethod
    def _peek_hello(conn: socket.socket) -> tuple[bool | None, int]:
        """(True: offers gossamer-tcp, False: does not, None: incomplete), and for an
        incomplete hello how many bytes the first record needs."""
        try:
            data = conn.recv(PEEK_LIMIT, socket.MSG_PEEK)
        except BlockingIOError:
            return None, 5
        except OSError:
            return False, 0
        if data[:1] not in (b"", b"\x16"):
            return False, 0
        if len(data) < 5:
            return None, 5
        needed = 5 + int.from_bytes(data[3:5], "big")
        if len(data) < needed:
            return None, needed
        names = offered_alpn(data) or ()
        # Exactly when the handshake would negotiate gossamer-tcp: the inbound server prefers
        # the HTTP protocols, so a hello that also offers one of them is not ours.
        return _TCP_ALPN in names and not _HTTP_ALPN.intersection(names), needed

    async def _await_hello(self, conn: socket.socket, fallback: Fallback) -> None:
        # The socket stays readable while the first bytes sit unread; the low-water mark
        # makes it readable only once the whole first record is there (or at EOF).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HELLO_TIMEOUT
        fd = conn.fileno()
        for _ in range(2):  # the record header, then the record
            verdict, needed = self._peek_hello(conn)
            if verdict is not None:
                break
            readable: asyncio.Future[None] = loop.create_future()
            try:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, needed)
                loop.add_reader(fd, _resolve, readable)
                await asyncio.wait_for(readable, max(0.0, deadline - loop.time()))
            except (OSError, TimeoutError):
                conn.close()
                return
            finally:
                remove_reader(loop, fd)
        else:
            verdict, _needed = self._peek_hello(conn)
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        except OSError:
            verdict = None
        if verdict is None:  # closed, or sent less than its record announced
            conn.close()
        elif verdict:
            await self._accept_inbound(conn)
        else:
            await fallback(conn)

    def _inbound_allows_tcp(self) -> bool:
        table = self.state.table
        if table is None:
            return False
        if table is not self._ports_table:
            self._ports_table = table
            snapshot = self.state.snapshot or {}
            inbound = snapshot.get("inbound")
            ports = inbound.get("ports") if isinstance(inbound, Mapping) else None
            self._tcp_port = _first_tcp_port(ports)
            if not isinstance(ports, list):
                self._tcp_inbound = True
            else:
                kinds = {p.get("protocol") for p in ports if isinstance(p, Mapping)}
                # Beside an HTTP port, only with a TCP app address of its own: the one app
                # address is the HTTP app's, and raw bytes there would skip the identity
                # header's stripping.
                self._tcp_inbound = "tcp" in kinds and (
                    kinds == {"tcp"} or self.settings.workload.tcp_app is not None
                )
        return self._tcp_inbound

    def _authorized(self, authorization: Authorization, peer: str) -> Decision:
        """What the workload's AuthorizationPolicies say of ``peer`` opening a TCP connection
        to its ``tcp`` port (judged by source and port: ``snapshot.authorization``)."""
        self._inbound_allows_tcp()  # brings self._tcp_port up to date
        decision = authorization.decide(Attributes(peer, self._tcp_port, http=False))
        self.metrics.authz(decision)
        if not decision.allowed:
            self.metrics.error("inbound", "forbidden")
            log.info("TCP connection from %s refused: %s", peer or "a plaintext caller",
                     decision.reason)  # fmt: skip
        return decision

    def _admitted(self, decision: Decision | None, peer: str) -> bool:
        """Whether a connection so judged goes on; an audited one is recorded when refused
        (when allowed: once it closes), or refused when the spool is full (``block``)."""
        spool = self.state.audit_spool
        if decision is not None and decision.audit and spool is not None:
            if decision.allowed and spool.block and not spool.accepting:
                spool.refused()
                self.metrics.error("inbound", "audit-unavailable")
                return False
            if not decision.allowed:
                workload = (self.settings.workload.namespace, self.settings.workload.service)
                spool.append(connection_row(time.time_ns(), peer, 0, 0, decision, workload))
        return decision is None or decision.allowed

    def _inbound_relay(self, peer: str) -> Relay | None:
        workload = self.settings.workload
        if workload.app is None and workload.tcp_app is None:
            self.metrics.error("inbound", "no-local-app")
            return None
        if not self._inbound_allows_tcp():
            self.metrics.error("inbound", "tcp-not-allowed")
            log.info("refusing a TCP connection from %s: no inbound port is tcp", peer or "?")
            return None
        try:
            source = SpiffeId.parse(peer).service_account if peer else "unknown"
        except ValueError:
            source = "unknown"
        relay = self._new_relay(self.metrics.tcp("inbound", source, self._source))
        relay.direction, relay.peer_identity = "inbound", peer
        return relay

    async def _accept_inbound(self, conn: socket.socket) -> None:
        if self._full("inbound"):
            conn.close()
            return
        loop = asyncio.get_running_loop()
        stream = TlsStream(self._credentials.server_context, self.buffers, server_side=True)
        try:
            await loop.connect_accepted_socket(lambda: stream, conn)
            await stream.ready
        except (OSError, TlsFailure) as exc:
            self.metrics.tls_handshake_failures += 1
            log.info("inbound TLS handshake (tcp) failed: %s", exc)
            conn.close()
            return
        table = self.state.table
        if table is not None and stream.peer_serial in table.revoked:
            self.metrics.error("inbound", "revoked-peer")
            stream.abort()
            return
        peer = stream.peer_identity
        decision = None
        if table is not None and table.authorization is not None:
            decision = self._authorized(table.authorization, peer)
        if not self._admitted(decision, peer):
            stream.abort()
            return
        relay = self._inbound_relay(peer)
        if relay is None:
            stream.abort()
            return
        if decision is not None and decision.audit:
            relay.audit = decision
        stream.attach(relay.down)
        await self._connect_app(relay)

    async def _connect_app(self, relay: Relay) -> None:
        workload = self.settings.workload
        app = workload.tcp_app or workload.app
        assert app is not None
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: relay.up, app.host, app.port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            relay.stats.connect_failures += 1
            self.metrics.error("inbound", "connect-failed")
            log.info("local app %s refused a TCP connection: %s", app, exc)
            relay.abort()


def _first_tcp_port(ports: object) -> int:
    """The first port the workload declares ``tcp`` (``snapshot.inbound.ports``), else 0."""
    if isinstance(ports, list):
        for entry in ports:
            if isinstance(entry, Mapping) and entry.get("protocol") == "tcp":
                port = entry.get("port")
                if isinstance(port, int):
                    return port
    return 0


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Refuse(asyncio.Protocol):
    """A connection accepted past the cap: cut at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


def _revoked_peer(relay: Relay, revoked: frozenset[str]) -> bool:
    """Whether either end of ``relay`` is a TLS peer whose certificate is revoked."""
    return any(
        getattr(end.transport, "peer_serial", "") in revoked for end in (relay.down, relay.up)
    )


class TcpSnapshotHandler:
    """The proxy state as the control client's snapshot handler, plus the TCP side: after a
    snapshot is installed, open relays are checked against the new routes, and the upstream
    services are part of every subscription."""

    def __init__(self, state: ProxyState, tcp: TcpProxy) -> None:
        self._state = state
        self._tcp = tcp

    def apply_snapshot(self, version: int, snapshot: dict[str, Any]) -> None:
        self._state.apply_snapshot(version, snapshot)
        self._tcp.table_changed()

    def subscriptions(self) -> list[str]:
        return sorted({*self._state.subscriptions(), *self._tcp.subscriptions()})
