"""Per-proxy snapshots (docs/internals.md §5), built from a read-only view of the mesh.

Pure functions, no I/O: :class:`MeshView` is what the store and registry know at one moment;
:func:`build_snapshot` turns it plus one proxy's subscriptions into the JSON-able snapshot
content (without ``version``; the pusher adds that when the content changed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gossamer.identity.spiffe import SpiffeId

__all__ = [
    "EndpointInfo",
    "MeshView",
    "ServiceInfo",
    "build_snapshot",
    "normalize_service_name",
    "resolve_subscriptions",
    "with_version",
]

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DNS_SUFFIXES = (("svc",), ("svc", "cluster", "local"))

ServiceKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What a ``Service`` resource says about a service."""

    name: str
    namespace: str
    service_account: str
    protocol: str = "http"
    calls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """One healthy endpoint: the destination sidecar's inbound (mTLS) address."""

    address: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "port": self.port, "labels": dict(self.labels)}


@dataclass(frozen=True, slots=True)
class MeshView:
    """A consistent read of the mesh for building snapshots."""

    trust_domain: str
    mtls_mode: str
    services: Mapping[ServiceKey, ServiceInfo]
    endpoints: Mapping[ServiceKey, Sequence[EndpointInfo]]  # healthy only
    workload_services: frozenset[ServiceKey] = frozenset()

    def is_known(self, key: ServiceKey) -> bool:
        return key in self.services or key in self.workload_services

    def service_account(self, key: ServiceKey) -> str:
        info = self.services.get(key)
        return info.service_account if info is not None else key[1]

    def identity(self, key: ServiceKey) -> SpiffeId:
        return SpiffeId(self.trust_domain, key[0], self.service_account(key))


def normalize_service_name(name: str, default_namespace: str) -> ServiceKey | None:
    """``name``, ``name.ns``, ``name.ns.svc``, ``name.ns.svc.cluster.local`` → (ns, name).

    None when the text is not a service name.
    """
    parts = name.strip().lower().split(".")
    if len(parts) > 2 and tuple(parts[2:]) in _DNS_SUFFIXES:
        parts = parts[:2]
    if len(parts) == 1:
        parts.append(default_namespace)
    if len(parts) != 2 or not all(_LABEL.match(part) for part in parts):
        return None
    return parts[1], parts[0]


def resolve_subscriptions(
    namespace: str, service: str, on_demand: Iterable[str], view: MeshView
) -> tuple[list[ServiceKey], list[str]]:
    """The services a proxy's snapshot holds: (known keys sorted, unknown names sorted).

    The set is the proxy's on-demand subscriptions plus its own Service's ``spec.calls``.
    Unknown services appear as ``name.namespace`` (or verbatim when not a valid name).
    """
    names = list(on_demand)
    own = view.services.get((namespace, service))
    if own is not None:
        names.extend(own.calls)
    known: set[ServiceKey] = set()
    unknown: set[str] = set()
    for name in names:
        key = normalize_service_name(name, namespace)
        if key is None:
            unknown.add(name)
        elif view.is_known(key):
            known.add(key)
        else:
            unknown.add(f"{key[1]}.{key[0]}")
    return sorted(known), sorted(unknown)


def build_snapshot(
    namespace: str, service: str, on_demand: Iterable[str], view: MeshView
) -> dict[str, Any]:
    """The snapshot content for one proxy of (namespace, service), without ``version``."""
    known, unknown = resolve_subscriptions(namespace, service, on_demand, view)
    services: list[dict[str, Any]] = []
    for key in known:
        info = view.services.get(key)
        endpoints = sorted(view.endpoints.get(key, ()), key=lambda e: (e.address, e.port))
        services.append(
            {
                "name": key[1],
                "namespace": key[0],
                "identity": view.identity(key).uri,
                "protocol": info.protocol if info is not None else "http",
                "endpoints": [endpoint.to_json() for endpoint in endpoints],
            }
        )
    return {
        "trust_domain": view.trust_domain,
        "proxy": {
            "service": service,
            "namespace": namespace,
            "identity": view.identity((namespace, service)).uri,
        },
        "inbound": {"mtls": view.mtls_mode},
        "outbound": {"services": services, "unknown": unknown},
    }


def with_version(content: Mapping[str, Any], version: int) -> dict[str, Any]:
    """The snapshot as sent: ``version`` first, then the content."""
    return {"version": version, **content}
