"""Logical stage of the outbound path: which mesh service a request is for.

A control-plane snapshot (plain JSON, see docs/internals.md §5) is compiled once into a
``RouteTable``: a dict from every host alias of every service this proxy may call to an
``OutboundService`` carrying its balancer, expected identity and metric slots. The hot path
does one dict lookup per request. A snapshot that does not compile raises ``SnapshotError`` so
the proxy NACKs it and keeps its last good table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gossamer.proxy.balance import (
    Balancer,
    EndpointAddr,
    EndpointState,
    PeakEwmaBalancer,
    RoundRobinBalancer,
)
from gossamer.proxy.metrics import Metrics, RouteStats

__all__ = ["OutboundService", "RouteTable", "SnapshotError", "compile_snapshot", "service_key"]

_HOST_CACHE_LIMIT = 4096


class SnapshotError(ValueError):
    """The snapshot is malformed; the message says where."""


class OutboundService:
    """A destination service as this proxy sees it."""

    __slots__ = ("balancer", "identity", "key", "name", "namespace", "protocol", "sni", "stats")

    def __init__(
        self,
        name: str,
        namespace: str,
        identity: str,
        protocol: str,
        balancer: Balancer,
        stats: RouteStats,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.key = f"{name}.{namespace}"
        self.identity = identity
        self.protocol = protocol
        self.balancer = balancer
        self.stats = stats
        self.sni = f"{name}.{namespace}.svc"


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
    ) -> None:
        self.version = version
        self.mtls = mtls  # inbound mode: STRICT refuses plaintext, PERMISSIVE accepts it
        self.services = dict(services)  # by key "name.ns"
        self.unknown = unknown
        self.namespace = namespace
        self.default_service = default_service
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

    def endpoints(self) -> dict[tuple[str, int], EndpointState]:
        return {
            (ep.addr.host, ep.addr.port): ep
            for svc in self.services.values()
            for ep in svc.balancer.endpoints
        }


def _require(obj: Mapping[str, Any], field: str, kind: type, where: str) -> Any:
    value = obj.get(field)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise SnapshotError(f"{where}.{field}: expected {kind.__name__}, got {value!r}")
    return value


def compile_snapshot(
    snapshot: Mapping[str, Any],
    *,
    metrics: Metrics,
    previous: RouteTable | None,
    default_service: str | None = None,
    balancer: str = "peak-ewma",
) -> RouteTable:
    """Compile a snapshot into a route table; raise ``SnapshotError`` naming the bad field."""
    if not isinstance(snapshot, Mapping):
        raise SnapshotError("snapshot: expected an object")
    version = _require(snapshot, "version", int, "snapshot")
    proxy = _require(snapshot, "proxy", Mapping, "snapshot")
    namespace = _require(proxy, "namespace", str, "snapshot.proxy")
    source = _require(proxy, "service", str, "snapshot.proxy")
    outbound = _require(snapshot, "outbound", Mapping, "snapshot")
    raw_services = _require(outbound, "services", list, "snapshot.outbound")
    inbound = snapshot.get("inbound", {})
    if not isinstance(inbound, Mapping):
        raise SnapshotError("snapshot.inbound: expected an object")
    mtls = inbound.get("mtls", "STRICT")
    if mtls not in ("STRICT", "PERMISSIVE"):
        raise SnapshotError(f"snapshot.inbound.mtls: expected STRICT or PERMISSIVE, got {mtls!r}")
    unknown_raw = outbound.get("unknown", [])
    if not isinstance(unknown_raw, list) or not all(isinstance(u, str) for u in unknown_raw):
        raise SnapshotError("snapshot.outbound.unknown: expected a list of strings")

    reuse = previous.endpoints() if previous is not None else {}
    services: dict[str, OutboundService] = {}
    for i, raw in enumerate(raw_services):
        where = f"snapshot.outbound.services[{i}]"
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
        endpoints: list[EndpointState] = []
        for j, ep in enumerate(_require(raw, "endpoints", list, where)):
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
        chosen: Balancer = (
            RoundRobinBalancer(endpoints)
            if balancer == "round-robin"
            else PeakEwmaBalancer(endpoints)
        )
        stats = metrics.route("outbound", source, name, identity)
        key = f"{name}.{ns}"
        if key in services:
            raise SnapshotError(f"{where}: service {key} listed twice")
        services[key] = OutboundService(name, ns, identity, str(protocol), chosen, stats)

    default = None
    if default_service is not None:
        default_key = service_key(default_service, namespace)
        default = services.get(default_key) if default_key else None
    return RouteTable(version, services, frozenset(unknown_raw), namespace, default, mtls)
