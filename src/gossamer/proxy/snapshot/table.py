"""Logical stage of the outbound path: which mesh service a request is for.

A control-plane snapshot (plain JSON, see docs/internals.md §5) is compiled once into a
``RouteTable``: a dict from every host alias of every service this proxy may call to an
``OutboundService`` carrying its balancer, expected identity and metric slots. The hot path
does one dict lookup per request. A snapshot that does not compile raises ``SnapshotError`` so
the proxy NACKs it and keeps its last good table.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from gossamer.identity.spiffe import canonical_serial
from gossamer.proxy.observe.metrics import Metrics, RouteStats
from gossamer.proxy.pipeline.authenticate import AuthenticateStage, TokenCache
from gossamer.proxy.pipeline.authorize import AuthorizeStage
from gossamer.proxy.pipeline.balancer import (
    Balancer,
    ConsistentHashBalancer,
    EndpointAddr,
    EndpointState,
    LeastRequestBalancer,
    PeakEwmaBalancer,
    RoundRobinBalancer,
)
from gossamer.proxy.pipeline.call import authority_port
from gossamer.proxy.pipeline.slots import Stage, Stages
from gossamer.proxy.pipeline.user_filters import compile_filters
from gossamer.proxy.resilience.limits import UNLIMITED, ConnectionLimits
from gossamer.proxy.resilience.ratelimit import LocalRateLimiter
from gossamer.proxy.snapshot.access_log import AccessLogConfig, compile_access_log
from gossamer.proxy.snapshot.audit import DEFAULT_AUDIT, AuditConfig, compile_audit
from gossamer.proxy.snapshot.authorization import Authorization, compile_authorization
from gossamer.proxy.snapshot.egress import EgressPolicy
from gossamer.proxy.snapshot.errors import SnapshotError
from gossamer.proxy.snapshot.http_rules import HttpRouter
from gossamer.proxy.snapshot.jwt_rules import compile_jwt_rules, fingerprint
from gossamer.proxy.snapshot.service_policy import ServicePolicy
from gossamer.proxy.snapshot.tcp_rules import TcpRoute
from gossamer.proxy.snapshot.tracing import TracingConfig, compile_tracing

if TYPE_CHECKING:
    from gossamer.snapshot_schema import Snapshot

__all__ = ["OutboundService", "RouteTable", "SnapshotError", "compile_snapshot", "service_key"]

_HOST_CACHE_LIMIT = 4096
EJECTION_CHECK_INTERVAL = 0.25  # how stale the ejected set may be (returns are time-based)


class ConnectionAccount:
    """Connections this proxy holds to one service and requests waiting for one (circuit
    breaking); it outlives config updates, so connections opened under an old snapshot still
    count. Pending entries are ``(downstream, exchange)`` pairs; the downstream decides whether
    the exchange is still wanted."""

    __slots__ = ("limits", "open", "pending")

    def __init__(self) -> None:
        self.open = 0
        self.pending: deque[tuple[Any, Any]] = deque()
        self.limits: ConnectionLimits = UNLIMITED

    def exhausted(self, served: int) -> bool:
        return self.limits.connection_exhausted(served)

    def hand_over(self, conn: Any) -> bool:
        """Give a connection that just became idle to the oldest waiting request."""
        while self.pending:
            downstream, ex = self.pending.popleft()
            if downstream.wants(ex):
                downstream.start_pending(ex, conn)
                return True
        return False

    def connection_closed(self) -> None:
        """A connection closed: the slot goes to the oldest waiting request, if any."""
        self.open -= 1
        while self.pending:
            downstream, ex = self.pending.popleft()
            if downstream.wants(ex):
                downstream.send_to(ex)
                return


class OutboundService:
    """A destination service as this proxy sees it: endpoints, policy, routes, accounting."""

    __slots__ = (
        "_next_refresh",
        "_subsets",
        "account",
        "balancer",
        "endpoints_all",
        "external",
        "identity",
        "key",
        "name",
        "namespace",
        "plaintext_default",
        "plaintext_ports",
        "policy",
        "ports",
        "protocol",
        "router",
        "sni",
        "stats",
        "tcp_route",
    )

    def __init__(
        self,
        name: str,
        namespace: str,
        identity: str,
        protocol: str,
        endpoints: Sequence[EndpointState],
        stats: RouteStats,
        policy: ServicePolicy | None = None,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.external = False  # a host outside the mesh (snapshot/egress.py): plain, own pool
        self.key = f"{name}.{namespace}"
        self.identity = identity
        self.protocol = protocol
        self.ports: dict[int, str] = {}  # port -> protocol, as the service declares them
        # Its workloads take plaintext (PeerAuthentication DISABLE): for the service, and by
        # port where a port's mode differs; a host outside the mesh (``external``) always.
        self.plaintext_default = False
        self.plaintext_ports: dict[int, bool] = {}
        self.stats = stats
        self.sni = f"{name}.{namespace}.svc"
        self.policy = policy or ServicePolicy()
        self.router: Any = None  # an HttpRouter when the service has HTTP routes
        self.tcp_route: TcpRoute | None = None
        self.endpoints_all: tuple[EndpointState, ...] = tuple(endpoints)
        self._subsets: dict[tuple[tuple[str, str], ...], Balancer] = {}
        self._next_refresh = 0.0
        self.balancer = self._balancer_for(self.endpoints_all)
        self.account = ConnectionAccount()
        if self.policy.outlier is not None:
            self.policy.outlier.set_endpoints(ep.addr for ep in self.endpoints_all)

    def _balancer_for(self, endpoints: Sequence[EndpointState]) -> Balancer:
        lb = self.policy.lb_type
        if lb == "RoundRobin":
            return RoundRobinBalancer(endpoints)
        if lb == "LeastRequest":
            return LeastRequestBalancer(endpoints)
        if lb == "ConsistentHash":
            return ConsistentHashBalancer(endpoints)
        return PeakEwmaBalancer(endpoints)

    def pick(
        self, subset: tuple[tuple[str, str], ...] = (), hash_key: bytes | None = None
    ) -> EndpointState | None:
        """An endpoint for one request: within ``subset`` (label pairs), skipping ejected
        outliers, by the service's balancer (or the hash ring, given a key)."""
        if self.policy.outlier is not None and time.monotonic() >= self._next_refresh:
            self._refresh_ejections()
        balancer = self._subsets.get(subset) if subset else self.balancer
        if balancer is None:
            wanted = dict(subset)
            balancer = self._subsets[subset] = self._balancer_for(
                [
                    ep for ep in self.balancer.endpoints
                    if all(ep.labels.get(k) == v for k, v in wanted.items())
                ]
            )
        if hash_key is not None and isinstance(balancer, ConsistentHashBalancer):
            return balancer.pick_for(hash_key)
        return balancer.pick()

    def plaintext(self, authority: bytes, scheme: bytes) -> bool:
        """Whether a request to ``authority`` goes out in plaintext (no mTLS): a host outside
        the mesh, or a workload taking plaintext (DISABLE) on the port the request names."""
        if self.external:
            return True
        if not self.plaintext_ports:
            return self.plaintext_default
        return self.plaintext_ports.get(authority_port(authority, scheme), self.plaintext_default)

    def port_protocol(self, port: int) -> str:
        """What callers speak to ``port`` of this service: the port's declared protocol, or
        the service's own (its first port's) for a port it does not declare (callers of HTTP
        services often name port 80 whatever the app listens on)."""
        return self.ports.get(port, self.protocol)

    def record_outcome(self, endpoint: EndpointState, outcome: str) -> None:
        """Tell outlier detection how a request to ``endpoint`` went (see resilience.outlier)."""
        outlier = self.policy.outlier
        if outlier is not None and outlier.record(endpoint.addr, outcome, time.monotonic()):
            self._next_refresh = 0.0  # an ejection: rebuild the balancers at the next pick

    def _refresh_ejections(self) -> None:
        outlier = self.policy.outlier
        assert outlier is not None
        now = time.monotonic()
        ejected = outlier.ejected(now)
        live = tuple(ep for ep in self.endpoints_all if ep.addr not in ejected)
        if live != self.balancer.endpoints:
            self.balancer = self._balancer_for(live)
            self._subsets.clear()
        self._next_refresh = now + EJECTION_CHECK_INTERVAL


def service_key(host: str, default_namespace: str) -> str | None:
    """Normalise ``name``, ``name.ns``, ``name.ns.svc[.cluster.local]`` (port stripped) to
    ``name.ns``; None for anything that cannot be a mesh service name (IPs, other domains)."""
    host = host.strip().lower()
    if host.startswith("["):
        return None
    host = host.partition(":")[0].rstrip(".")
    if not host:
        return None
    parts = host.split(".")
    if parts[0].isdigit() or not all(parts):
        return None
    if len(parts) == 1:
        return f"{parts[0]}.{default_namespace}"
    if len(parts) == 2 or parts[2:] in (["svc"], ["svc", "cluster", "local"]):
        return f"{parts[0]}.{parts[1]}"
    return None


class RouteTable:
    """Host → service lookups for one compiled snapshot."""

    def __init__(
        self,
        version: int,
        services: Mapping[str, OutboundService],
        unknown: frozenset[str],
        namespace: str,
        default_service: OutboundService | None = None,
        mtls: str = "STRICT",
        rate_limiter: LocalRateLimiter | None = None,
        rate_limit_raw: Any = None,
    ) -> None:
        self.rate_limiter = rate_limiter  # inbound admission for this proxy's own service
        self.rate_limit_raw = rate_limit_raw
        # The pipeline's slots for each direction (``pipeline.slots``); None: nothing in any.
        self.inbound_stages: Stages | None = None
        self.outbound_stages: Stages | None = None
        self.tracing: TracingConfig | None = None  # the trace stages are the state's
        self.audit: AuditConfig = DEFAULT_AUDIT  # the audit stage and its spool are the state's
        self.access_log: AccessLogConfig | None = None  # its stages and writer: the state's
        self.version = version
        self.mtls = mtls  # inbound mode: STRICT refuses plaintext, PERMISSIVE/DISABLE accept it
        # Ports whose mode differs from ``mtls`` (PeerAuthentication portLevelMtls).
        self.port_mtls: dict[int, str] = {}
        self.services = dict(services)  # by key "name.ns"
        self.unknown = unknown
        self.namespace = namespace
        self.default_service = default_service
        # Serials of revoked certificates: refused as callers and as upstreams.
        self.revoked: frozenset[str] = frozenset()
        # The workload's AuthorizationPolicies (HTTP: the inbound ``authorize`` stage; TCP:
        # the relay asks them itself); None: no policy applies.
        self.authorization: Authorization | None = None
        # RequestAuthentications: the verified-token cache, kept while the rules and keys
        # (their fingerprint) stay the same from one snapshot to the next.
        self.token_cache: TokenCache | None = None
        self.jwt_fingerprint = ""
        # Hosts outside the mesh: whether a call may leave it, and their services.
        self.egress = EgressPolicy("ALLOW_ANY", [])
        self.make_external: (
            Callable[[str, int, list[EndpointState]], OutboundService] | None
        ) = None
        self._hosts: dict[bytes, OutboundService | None] = {}

    def resolve(self, host: bytes) -> OutboundService | None:
        """The service for a Host header value, or None when it is not (yet) known."""
        try:
            return self._hosts[host]
        except KeyError:
            pass
        key = service_key(host.decode("latin-1"), self.namespace)
        service = self.services.get(key) if key else None
        if service is None and self.default_service is not None:
            service = self.default_service
        if service is not None or len(self._hosts) < _HOST_CACHE_LIMIT:
            # Misses are cached too (bounded), so junk hosts cost one lookup after the first.
            if len(self._hosts) >= _HOST_CACHE_LIMIT:
                self._hosts.clear()
            self._hosts[host] = service
        return service

    @property
    def plaintext_ok(self) -> bool:
        """Whether a plaintext connection may be taken at all (some port is not STRICT)."""
        return self.mtls != "STRICT" or any(m != "STRICT" for m in self.port_mtls.values())

    def strict_for(self, port: int) -> bool:
        """Whether plaintext to ``port`` (the port a request names) is refused."""
        return self.port_mtls.get(port, self.mtls) == "STRICT"

    def endpoints(self) -> dict[tuple[str, int], EndpointState]:
        return {
            (ep.addr.host, ep.addr.port): ep
            for svc in self.services.values()
            for ep in svc.endpoints_all
        }


def _require(obj: Mapping[str, Any], field: str, kind: type, where: str) -> Any:
    value = obj.get(field)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise SnapshotError(f"{where}.{field}: expected {kind.__name__}, got {value!r}")
    return value


def compile_snapshot(
    snapshot: Snapshot,
    *,
    metrics: Metrics,
    previous: RouteTable | None,
    default_service: str | None = None,
    balancer: str = "peak-ewma",
    jwks_refresh: Callable[[str], None] | None = None,
) -> RouteTable:
    """Compile a snapshot into a route table; raise ``SnapshotError`` naming the bad field.

    ``snapshot`` has the schema's type (``gossamer.snapshot_schema``) but arrives as untrusted
    JSON: every field is checked as it is read, through ``Mapping[str, Any]``."""
    raw: object = snapshot
    if not isinstance(raw, Mapping):
        raise SnapshotError("snapshot: expected an object")
    version = _require(raw, "version", int, "snapshot")
    proxy = _require(raw, "proxy", Mapping, "snapshot")
    namespace = _require(proxy, "namespace", str, "snapshot.proxy")
    source = _require(proxy, "service", str, "snapshot.proxy")
    outbound = _require(raw, "outbound", Mapping, "snapshot")
    raw_services = _require(outbound, "services", list, "snapshot.outbound")
    mtls, rate_limiter, rate_limit_raw = _compile_inbound(raw, previous)
    unknown_raw = outbound.get("unknown", [])
    if not isinstance(unknown_raw, list) or not all(isinstance(u, str) for u in unknown_raw):
        raise SnapshotError("snapshot.outbound.unknown: expected a list of strings")
    services = _compile_services(raw_services, metrics, source, previous, balancer)
    default = None
    if default_service is not None:
        default_key = service_key(default_service, namespace)
        default = services.get(default_key) if default_key else None
    table = RouteTable(
        version, services, frozenset(unknown_raw), namespace, default, mtls,
        rate_limiter, rate_limit_raw,
    )
    table.revoked = _compile_revoked(raw)
    table.tracing = compile_tracing(raw.get("tracing"))
    table.audit = compile_audit(raw.get("audit"))
    table.access_log = compile_access_log(raw.get("access_log"))
    inbound_part = raw.get("inbound")
    table.port_mtls = compile_port_modes(
        inbound_part.get("port_mtls") if isinstance(inbound_part, Mapping) else None,
        "snapshot.inbound.port_mtls",
    )
    table.egress = EgressPolicy.from_snapshot(outbound.get("egress"), "snapshot.outbound.egress")
    table.make_external = partial(_external_service, metrics, source)
    _compile_stages(table, raw.get("inbound") or {}, outbound, metrics, source)
    _compile_security(table, raw.get("inbound") or {}, metrics, previous, jwks_refresh)
    return table


def _compile_stages(
    table: RouteTable, inbound: Any, outbound: Mapping[str, Any], metrics: Metrics, source: str
) -> None:
    """Each direction's slots for users' filters."""
    for direction, where, part in (
        ("inbound", "snapshot.inbound.filters", inbound),
        ("outbound", "snapshot.outbound.filters", outbound),
    ):
        stages = compile_filters(
            part.get("filters") if isinstance(part, Mapping) else None, where, direction,
            metrics=metrics, service=source, namespace=table.namespace,
        )  # fmt: skip
        if direction == "inbound":
            table.inbound_stages = stages
        else:
            table.outbound_stages = stages


def _compile_security(
    table: RouteTable,
    inbound: Any,
    metrics: Metrics,
    previous: RouteTable | None,
    jwks_refresh: Callable[[str], None] | None,
) -> None:
    """The inbound ``authenticate`` (RequestAuthentications) and ``authorize``
    (AuthorizationPolicies) slots; nothing when no such resource applies to the workload."""
    part = inbound if isinstance(inbound, Mapping) else {}
    added: list[Stage] = []
    raw_rules = part.get("request_authentication")
    rules = compile_jwt_rules(raw_rules, "snapshot.inbound.request_authentication")
    if rules:
        table.jwt_fingerprint = fingerprint(raw_rules)
        same = previous is not None and previous.jwt_fingerprint == table.jwt_fingerprint
        cache = previous.token_cache if same and previous is not None else None
        stage = AuthenticateStage(rules, jwks_refresh, cache)
        table.token_cache = stage.cache
        added.append(stage)
    authorization = compile_authorization(
        part.get("authorization"), "snapshot.inbound.authorization"
    )
    if authorization is not None:
        table.authorization = authorization
        added.append(AuthorizeStage(authorization, metrics))
    if added:
        others = table.inbound_stages.all if table.inbound_stages is not None else ()
        table.inbound_stages = Stages([*others, *added])


def _external_service(
    metrics: Metrics, source: str, host: str, port: int, endpoints: list[EndpointState]
) -> OutboundService:
    """A host outside the mesh as a destination: its endpoints (the host itself, or those
    its ``Egress`` lists), default policy, plain HTTP; its requests counted under
    ``dst_service="egress:<host>"``."""
    stats = metrics.route("outbound", source, f"egress:{host}", "none")
    service = OutboundService(host, "egress", "", "http", endpoints, stats)
    service.key = f"egress:{host}:{port}"
    service.sni = host
    service.external = True
    return service


def _compile_revoked(snapshot: Mapping[str, Any]) -> frozenset[str]:
    """``snapshot.revoked_serials``: upper-case hex serials (absent from older control
    planes: none)."""
    raw = snapshot.get("revoked_serials", [])
    if not isinstance(raw, list) or not all(isinstance(s, str) and s for s in raw):
        raise SnapshotError("snapshot.revoked_serials: expected a list of hex serials")
    return frozenset(canonical_serial(s) for s in raw)


def _compile_inbound(
    snapshot: Mapping[str, Any], previous: RouteTable | None
) -> tuple[str, LocalRateLimiter | None, Any]:
    """``snapshot.inbound``: the mTLS mode, the rate limiter (the previous table's while the
    limits are the same, so the buckets keep their state) and the limits as received."""
    inbound = snapshot.get("inbound", {})
    if not isinstance(inbound, Mapping):
        raise SnapshotError("snapshot.inbound: expected an object")
    mtls = inbound.get("mtls", "STRICT")
    rate_limit_raw = inbound.get("rate_limit")
    rate_limiter = None
    if rate_limit_raw is not None:
        if previous is not None and previous.rate_limit_raw == rate_limit_raw:
            rate_limiter = previous.rate_limiter  # same limits: keep the buckets' state
        else:
            rate_limiter = LocalRateLimiter.from_snapshot(
                rate_limit_raw, "snapshot.inbound.rate_limit"
            )
    if mtls not in _MODES:
        raise SnapshotError(
            f"snapshot.inbound.mtls: expected STRICT, PERMISSIVE or DISABLE, got {mtls!r}"
        )
    return mtls, rate_limiter, rate_limit_raw


_MODES = ("STRICT", "PERMISSIVE", "DISABLE")


def compile_port_modes(raw: object, where: str) -> dict[int, str]:
    """``port_mtls`` (of the inbound part or of a service): port -> mode where it differs."""
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise SnapshotError(f"{where}: expected a list")
    modes: dict[int, str] = {}
    for i, entry in enumerate(raw):
        port = entry.get("port") if isinstance(entry, Mapping) else None
        mode = entry.get("mode") if isinstance(entry, Mapping) else None
        if not isinstance(port, int) or isinstance(port, bool) or mode not in _MODES:
            raise SnapshotError(f"{where}[{i}]: expected {{port, mode}}")
        modes[port] = str(mode)
    return modes


def _compile_services(
    raw_services: list[Any],
    metrics: Metrics,
    source: str,
    previous: RouteTable | None,
    balancer: str,
) -> dict[str, OutboundService]:
    """``snapshot.outbound.services`` by key ``name.ns``; endpoint states (their load), policy
    state and connection accounts carry over from ``previous``."""
    reuse = previous.endpoints() if previous is not None else {}
    services: dict[str, OutboundService] = {}
    for i, raw in enumerate(raw_services):
        service = _compile_service(
            raw, f"snapshot.outbound.services[{i}]", metrics, source, previous, reuse, services,
            balancer,
        )  # fmt: skip
        services[service.key] = service
    return services


def _compile_service(
    raw: Any,
    where: str,
    metrics: Metrics,
    source: str,
    previous: RouteTable | None,
    reuse: Mapping[tuple[str, int], EndpointState],
    services: Mapping[str, OutboundService],
    balancer: str,
) -> OutboundService:
    """One entry of ``snapshot.outbound.services`` (``services``: the ones compiled before)."""
    if not isinstance(raw, Mapping):
        raise SnapshotError(f"{where}: expected an object")
    name = _require(raw, "name", str, where)
    ns = _require(raw, "namespace", str, where)
    identity = _require(raw, "identity", str, where)
    if not identity.startswith("spiffe://"):
        raise SnapshotError(f"{where}.identity: not a SPIFFE ID: {identity!r}")
    if not name or not ns:
        raise SnapshotError(f"{where}: name and namespace must not be empty")
    protocol = raw.get("protocol", "http")
    if protocol not in ("http", "http2", "grpc", "tcp"):
        raise SnapshotError(f"{where}.protocol: unknown protocol {protocol!r}")
    endpoints = _compile_endpoints(_require(raw, "endpoints", list, where), where, reuse)
    stats = metrics.route("outbound", source, name, identity)
    key = f"{name}.{ns}"
    if key in services:
        raise SnapshotError(f"{where}: service {key} listed twice")
    old = previous.services.get(key) if previous is not None else None
    policy = ServicePolicy.from_snapshot(
        raw.get("policy"), f"{where}.policy", old.policy if old is not None else None
    )
    if balancer == "round-robin" and raw.get("policy") is None:
        policy.lb_type = "RoundRobin"
    service = OutboundService(name, ns, identity, str(protocol), endpoints, stats, policy)
    if raw.get("http_routes"):
        service.router = HttpRouter.from_snapshot(
            raw["http_routes"], f"{where}.http_routes", default_service=key
        )
    service.tcp_route = TcpRoute.from_snapshot(raw.get("tcp_route"), f"{where}.tcp_route")
    service.ports = _compile_ports(raw.get("ports", []), f"{where}.ports")
    mode = raw.get("mtls", "STRICT")
    if mode not in _MODES:
        raise SnapshotError(f"{where}.mtls: expected STRICT, PERMISSIVE or DISABLE")
    service.plaintext_default = mode == "DISABLE"
    service.plaintext_ports = {
        port: m == "DISABLE"
        for port, m in compile_port_modes(raw.get("port_mtls"), f"{where}.port_mtls").items()
    }
    if old is not None:
        service.account = old.account
    service.account.limits = policy.limits
    return service


def _compile_ports(raw: Any, where: str) -> dict[int, str]:
    """``where`` (a service's ``ports``): port -> protocol."""
    if not isinstance(raw, list):
        raise SnapshotError(f"{where}: expected a list")
    ports: dict[int, str] = {}
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise SnapshotError(f"{where}[{i}]: expected an object")
        port = _require(entry, "port", int, f"{where}[{i}]")
        protocol = entry.get("protocol", "http")
        if protocol not in ("http", "http2", "grpc", "tcp"):
            raise SnapshotError(f"{where}[{i}].protocol: unknown protocol {protocol!r}")
        ports[port] = str(protocol)
    return ports


def _compile_endpoints(
    raw_endpoints: list[Any], where: str, reuse: Mapping[tuple[str, int], EndpointState]
) -> list[EndpointState]:
    """``where.endpoints``; an endpoint already known (``reuse``) keeps its state."""
    endpoints: list[EndpointState] = []
    for j, ep in enumerate(raw_endpoints):
        ep_where = f"{where}.endpoints[{j}]"
        if not isinstance(ep, Mapping):
            raise SnapshotError(f"{ep_where}: expected an object")
        host = _require(ep, "address", str, ep_where)
        port = _require(ep, "port", int, ep_where)
        if not 0 < port < 65536:
            raise SnapshotError(f"{ep_where}.port: out of range: {port}")
        labels = ep.get("labels") or {}
        if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise SnapshotError(f"{ep_where}.labels: expected an object of strings")
        state = reuse.get((host, port))
        if state is None:
            state = EndpointState(EndpointAddr(host, port), labels)
        else:
            state.labels = dict(labels)
        endpoints.append(state)
    return endpoints
