"""Per-proxy snapshots (docs/internals.md §5 and §8), built from a read-only view of the mesh.

Pure functions, no I/O: :class:`MeshView` is what the store and registry know at one moment;
:func:`traffic_index` compiles the traffic resources (HTTPRoute, TrafficPolicy, TCPRoute) into
per-service :class:`ServiceTraffic`; :func:`select_services` decides which services a proxy's
snapshot holds (its subscriptions plus every service their routes send or mirror to);
:func:`build_snapshot` turns all that into the JSON-able snapshot content (without ``version``;
the pusher adds that when the content changed), typed by :mod:`gossamer.snapshot_schema`, the
schema the sidecar's ``compile_snapshot`` is checked against too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from gossamer.config.egress import Egress
from gossamer.config.httproute import HTTPRoute
from gossamer.config.meshconfig import DEFAULT_ACCESS_LOG_TEMPLATE
from gossamer.config.proxyfilter import ProxyFilter
from gossamer.config.tcproute import TCPRoute
from gossamer.config.trafficpolicy import TrafficPolicy, default_policy_snapshot
from gossamer.control.security import (
    AuthorizationIndex,
    Jwks,
    PeerAuthnIndex,
    RequestAuthnIndex,
)
from gossamer.identity.spiffe import SpiffeId
from gossamer.snapshot_schema import (
    AccessLogSnapshot,
    AuditSnapshot,
    EgressHostSnapshot,
    EgressSnapshot,
    EndpointSnapshot,
    FilterSnapshot,
    HttpRuleSnapshot,
    MtlsMode,
    PolicySnapshot,
    PortProtocol,
    PortSnapshot,
    RateLimitSnapshot,
    ServiceSnapshot,
    Snapshot,
    SnapshotContent,
    TcpRouteSnapshot,
    TracingSnapshot,
)

__all__ = [
    "DEFAULT_PORTS",
    "EndpointInfo",
    "MeshView",
    "Selection",
    "ServiceInfo",
    "ServiceTraffic",
    "build_snapshot",
    "normalize_service_name",
    "select_services",
    "traffic_index",
    "with_version",
]

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DNS_SUFFIXES = (("svc",), ("svc", "cluster", "local"))

ServiceKey = tuple[str, str]  # (namespace, name)
DEFAULT_PORTS: tuple[tuple[int, PortProtocol], ...] = ((80, "http"),)


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What a ``Service`` resource says about a service."""

    name: str
    namespace: str
    service_account: str
    protocol: PortProtocol = "http"
    calls: tuple[str, ...] = ()
    ports: tuple[tuple[int, PortProtocol], ...] = DEFAULT_PORTS  # (port, protocol)
    access_log: bool | None = None  # its sidecars' access log on/off (None: the mesh's)
    sampling_percent: float | None = None  # its sidecars' trace sampling (None: the mesh's)


@dataclass(frozen=True, slots=True)
class ServiceTraffic:
    """The traffic resources of one service, compiled to their snapshot forms
    (:mod:`gossamer.snapshot_schema`).

    ``references`` are the services its routes send or mirror to (``(namespace, name)``).
    The dicts are shared between snapshots and never modified.
    """

    http_routes: tuple[HttpRuleSnapshot, ...] = ()
    policy: PolicySnapshot | None = None
    rate_limit: RateLimitSnapshot | None = None
    tcp_route: TcpRouteSnapshot | None = None
    references: frozenset[ServiceKey] = frozenset()
    inbound_filters: tuple[FilterSnapshot, ...] = ()  # ProxyFilters its sidecars run
    outbound_filters: tuple[FilterSnapshot, ...] = ()


_NO_TRAFFIC = ServiceTraffic()


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """One healthy endpoint: the destination sidecar's inbound (mTLS) address."""

    address: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> EndpointSnapshot:
        return {"address": self.address, "port": self.port, "labels": dict(self.labels)}


_ALLOW_ANY: EgressSnapshot = {"mode": "ALLOW_ANY", "hosts": []}
# What a Service with ``accessLog: true`` gets when the MeshConfig has no ``accessLog``
# (config/meshconfig.py AccessLogSettings' defaults).
DEFAULT_ACCESS_LOG: AccessLogSnapshot = {
    "format": "json", "template": DEFAULT_ACCESS_LOG_TEMPLATE, "path": "/dev/stdout",
}  # fmt: skip
DEFAULT_AUDIT: AuditSnapshot = {"spool_bytes": 256 * 1024 * 1024, "block": True}


def egress_snapshot(mode: str, egresses: Iterable[Egress]) -> EgressSnapshot:
    """``outbound.egress``: the MeshConfig's outbound traffic mode and every Egress's hosts."""
    hosts: list[EgressHostSnapshot] = [
        {
            "host": host,
            "ports": list(egress.spec.ports),
            "endpoints": [{"address": e.address, "port": e.port} for e in egress.spec.endpoints],
        }
        for egress in egresses
        for host in egress.spec.hosts
    ]
    return {"mode": "REGISTRY_ONLY" if mode == "REGISTRY_ONLY" else "ALLOW_ANY", "hosts": hosts}


@dataclass(frozen=True, slots=True)
class MeshView:
    """A consistent read of the mesh for building snapshots."""

    trust_domain: str
    mtls_mode: MtlsMode
    services: Mapping[ServiceKey, ServiceInfo]
    endpoints: Mapping[ServiceKey, Sequence[EndpointInfo]]  # healthy only
    workload_services: frozenset[ServiceKey] = frozenset()
    traffic: Mapping[ServiceKey, ServiceTraffic] = field(default_factory=dict)
    revoked_serials: tuple[str, ...] = ()  # unexpired revoked certificates (revocation.py)
    egress: EgressSnapshot = field(default_factory=lambda: _ALLOW_ANY)
    authorization: AuthorizationIndex = field(default_factory=lambda: AuthorizationIndex())
    request_authn: RequestAuthnIndex = field(default_factory=lambda: RequestAuthnIndex())
    peer_authn: PeerAuthnIndex = field(default_factory=lambda: PeerAuthnIndex())
    # The key sets the control plane fetched: (issuer, jwksUri) -> (keys or None, error).
    jwks: Jwks = field(default_factory=dict)
    tracing: TracingSnapshot | None = None  # the MeshConfig's spec.tracing, snapshot form
    audit: AuditSnapshot = field(default_factory=lambda: DEFAULT_AUDIT)  # spec.audit
    access_log: AccessLogSnapshot | None = None  # spec.accessLog (None: off by default)

    def is_known(self, key: ServiceKey) -> bool:
        return key in self.services or key in self.workload_services

    def service_account(self, key: ServiceKey) -> str:
        info = self.services.get(key)
        return info.service_account if info is not None else key[1]

    def identity(self, key: ServiceKey) -> SpiffeId:
        return SpiffeId(self.trust_domain, key[0], self.service_account(key))

    def ports(self, key: ServiceKey) -> list[PortSnapshot]:
        info = self.services.get(key)
        ports = info.ports if info is not None else DEFAULT_PORTS
        return [{"port": port, "protocol": protocol} for port, protocol in ports]

    def traffic_of(self, key: ServiceKey) -> ServiceTraffic:
        return self.traffic.get(key, _NO_TRAFFIC)


def _by_name(resource: HTTPRoute | TrafficPolicy | TCPRoute) -> tuple[str, str]:
    return (resource.metadata.name, resource.metadata.namespace)


def traffic_index(
    http_routes: Iterable[HTTPRoute],
    policies: Iterable[TrafficPolicy],
    tcp_routes: Iterable[TCPRoute],
    proxy_filters: Iterable[ProxyFilter] = (),
) -> dict[ServiceKey, ServiceTraffic]:
    """Compile the traffic resources per service.

    HTTPRoutes of one service are merged in name order (then namespace); of several
    TrafficPolicies or TCPRoutes for one service, the first in that order applies.
    """
    rules: dict[ServiceKey, list[HttpRuleSnapshot]] = {}
    refs: dict[ServiceKey, set[ServiceKey]] = {}
    for route in sorted(http_routes, key=_by_name):
        key = route.service_key
        rules.setdefault(key, []).extend(route.snapshot_rules())
        refs.setdefault(key, set()).update(route.references())
    chosen_policies: dict[ServiceKey, TrafficPolicy] = {}
    for policy in sorted(policies, key=_by_name):
        chosen_policies.setdefault(policy.service_key, policy)
    chosen_tcp: dict[ServiceKey, TCPRoute] = {}
    for tcp in sorted(tcp_routes, key=_by_name):
        if tcp.service_key not in chosen_tcp:
            chosen_tcp[tcp.service_key] = tcp
            refs.setdefault(tcp.service_key, set()).update(tcp.references())
    filters: dict[tuple[ServiceKey, str], list[FilterSnapshot]] = {}
    for proxy_filter in sorted(proxy_filters, key=lambda f: f.order):
        key = proxy_filter.service_key
        filters.setdefault((key, proxy_filter.spec.direction), []).append(
            proxy_filter.to_snapshot()
        )
    out: dict[ServiceKey, ServiceTraffic] = {}
    filtered = {key for key, _direction in filters}
    for key in rules.keys() | chosen_policies.keys() | chosen_tcp.keys() | filtered:
        chosen_policy = chosen_policies.get(key)
        chosen_route = chosen_tcp.get(key)
        out[key] = ServiceTraffic(
            http_routes=tuple(rules.get(key, ())),
            policy=chosen_policy.policy_snapshot() if chosen_policy is not None else None,
            rate_limit=(chosen_policy.rate_limit_snapshot() if chosen_policy is not None else None),
            tcp_route=chosen_route.to_snapshot() if chosen_route is not None else None,
            references=frozenset(refs.get(key, set()) - {key}),
            inbound_filters=tuple(filters.get((key, "inbound"), ())),
            outbound_filters=tuple(filters.get((key, "outbound"), ())),
        )
    return out


def normalize_service_name(name: str, default_namespace: str) -> ServiceKey | None:
    """``name``, ``name.ns``, ``name.ns.svc``, ``name.ns.svc.cluster.local`` → (ns, name).

    None when the text is not a service name.
    """
    parts = name.strip().lower().split(".")
    if len(parts) > 2 and tuple(parts[2:]) in _DNS_SUFFIXES:
        parts = parts[:2]
    if len(parts) == 1:
        parts.append(default_namespace)
    if len(parts) != 2 or not all(_LABEL.fullmatch(part) for part in parts):
        return None
    return parts[1], parts[0]


@dataclass(frozen=True, slots=True)
class Selection:
    """The services of one proxy's snapshot.

    ``known``: keys in the snapshot (sorted); ``unknown``: names listed as unknown (sorted);
    ``watched``: every key whose appearance or endpoints would change the snapshot.
    """

    known: tuple[ServiceKey, ...]
    unknown: tuple[str, ...]
    watched: frozenset[ServiceKey]


def select_services(
    namespace: str, service: str, on_demand: Iterable[str], view: MeshView
) -> Selection:
    """Subscriptions plus, transitively, every service their routes send or mirror to."""
    names = list(on_demand)
    own = view.services.get((namespace, service))
    if own is not None:
        names.extend(own.calls)
    wanted: set[ServiceKey] = set()
    unknown: set[str] = set()
    for name in names:
        key = normalize_service_name(name, namespace)
        if key is None:
            unknown.add(name)
        else:
            wanted.add(key)
    known: set[ServiceKey] = set()
    pending = sorted(wanted)
    while pending:  # bounded: each key is visited at most once
        key = pending.pop()
        if key in known:
            continue
        if not view.is_known(key):
            unknown.add(f"{key[1]}.{key[0]}")
            continue
        known.add(key)
        for ref in view.traffic_of(key).references:
            wanted.add(ref)
            if ref not in known:
                pending.append(ref)
    return Selection(tuple(sorted(known)), tuple(sorted(unknown)), frozenset(wanted))


def _service_entry(key: ServiceKey, view: MeshView) -> ServiceSnapshot:
    info = view.services.get(key)
    traffic = view.traffic_of(key)
    endpoints = sorted(view.endpoints.get(key, ()), key=lambda e: (e.address, e.port))
    mode, port_modes = view.peer_authn.modes(key, view.mtls_mode)
    return {
        "name": key[1],
        "namespace": key[0],
        "identity": view.identity(key).uri,
        "protocol": info.protocol if info is not None else "http",
        "endpoints": [endpoint.to_json() for endpoint in endpoints],
        "ports": view.ports(key),
        "http_routes": list(traffic.http_routes),
        "policy": traffic.policy if traffic.policy is not None else default_policy_snapshot(),
        "tcp_route": traffic.tcp_route,
        "mtls": mode,
        "port_mtls": port_modes,
    }


def access_log_for(view: MeshView, own: ServiceKey) -> AccessLogSnapshot | None:
    """The access log of the workloads of ``own``: its Service's ``accessLog`` when set,
    else the MeshConfig's."""
    info = view.services.get(own)
    override = info.access_log if info is not None else None
    if override is None:
        return view.access_log
    if not override:
        return None
    return view.access_log or DEFAULT_ACCESS_LOG


def tracing_for(view: MeshView, own: ServiceKey) -> TracingSnapshot | None:
    """The tracing of the workloads of ``own``: the MeshConfig's (None: off), with its
    Service's ``tracing.samplingPercent`` as the ratio of the traces that start there when
    set."""
    tracing = view.tracing
    info = view.services.get(own)
    if tracing is None or info is None or info.sampling_percent is None:
        return tracing
    return cast(TracingSnapshot, {**tracing, "ratio": info.sampling_percent / 100.0})


def build_snapshot(
    namespace: str,
    service: str,
    on_demand: Iterable[str],
    view: MeshView,
    selection: Selection | None = None,
) -> SnapshotContent:
    """The snapshot content for one proxy of (namespace, service), without ``version``."""
    if selection is None:
        selection = select_services(namespace, service, on_demand, view)
    own = (namespace, service)
    own_mode, own_ports = view.peer_authn.modes(own, view.mtls_mode)
    return {
        "trust_domain": view.trust_domain,
        "tracing": tracing_for(view, own),
        "audit": view.audit,
        "access_log": access_log_for(view, own),
        "revoked_serials": list(view.revoked_serials),
        "proxy": {
            "service": service,
            "namespace": namespace,
            "identity": view.identity(own).uri,
        },
        "inbound": {
            "mtls": own_mode,
            "port_mtls": own_ports,
            "ports": view.ports(own),
            "rate_limit": view.traffic_of(own).rate_limit,
            "filters": list(view.traffic_of(own).inbound_filters),
            "authorization": view.authorization.of_workload(own),
            "request_authentication": view.request_authn.of_workload(own, view.jwks),
        },
        "outbound": {
            "services": [_service_entry(key, view) for key in selection.known],
            "unknown": list(selection.unknown),
            "filters": list(view.traffic_of(own).outbound_filters),
            "egress": view.egress,
        },
    }


def with_version(content: SnapshotContent, version: int) -> Snapshot:
    """The snapshot as sent: ``version`` first, then the content."""
    return {"version": version, **content}
