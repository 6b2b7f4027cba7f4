"""Calls to hosts outside the mesh (``snapshot.outbound.egress``; ``gossamer.config.egress``).

A host that is no mesh service leaves the mesh from this sidecar, over plain HTTP to the host
(or through a CONNECT tunnel, ``http1.connect``), when the mesh allows it: ``ALLOW_ANY`` (any
host), or ``REGISTRY_ONLY`` and an ``Egress`` names it (exact, ``*.suffix``, or an IP address;
with its ports, or any port). Where it connects: the ``Egress``'s ``endpoints`` when it lists
some (static addresses, as for a partner reached over a private link), else the host itself,
its name resolved when connecting. ``EgressPolicy.service`` gives such a host an
``OutboundService`` of its own (those endpoints), cached per authority and bounded, so that the
pipeline's concrete and endpoint stages, metrics and limits treat it as any other destination
(``external``: its connections are plain, from their own pool).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from gossamer.proxy.pipeline.balancer import EndpointAddr, EndpointState
from gossamer.proxy.snapshot.errors import SnapshotError

__all__ = ["EgressPolicy", "external_host"]

MAX_EXTERNAL = 1024  # external services kept per route table (then the cache starts over)


def external_host(authority: str) -> tuple[str, int] | None:
    """``(host, port)`` of an authority that may name a host outside the mesh: a name with a
    dot but not a mesh service's long form (``.svc``, ``.svc.cluster.local``), or an IP
    address (port 80 when none is given); None otherwise."""
    authority = authority.strip().lower()
    if authority.startswith("["):  # [v6]:port
        host, _, rest = authority[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = authority.partition(":")
    host = host.rstrip(".")
    if not host or (port_text and not port_text.isdigit()):
        return None
    port = int(port_text) if port_text else 80
    if not 0 < port < 65536:
        return None
    try:
        ipaddress.ip_address(host)
        return host, port
    except ValueError:
        pass
    if "." not in host or host.endswith((".svc", ".svc.cluster.local")):
        return None
    return host, port


Address = tuple[str, int]


class _HostRule:
    """One host entry of an ``Egress``: its ports (empty: any) and where it is served (empty:
    at the host itself, resolved by DNS; an endpoint port of 0: the port asked for)."""

    __slots__ = ("endpoints", "ports")

    def __init__(self, ports: frozenset[int], endpoints: tuple[Address, ...]) -> None:
        self.ports = ports
        self.endpoints = endpoints

    def takes(self, port: int) -> bool:
        return not self.ports or port in self.ports


class EgressPolicy:
    """The mode and the hosts ``Egress`` resources name, as compiled from a snapshot."""

    __slots__ = ("_exact", "_services", "_suffixes", "mode")

    def __init__(
        self, mode: str, hosts: list[tuple[str, frozenset[int], tuple[Address, ...]]]
    ) -> None:
        self.mode = mode
        self._exact: dict[str, list[_HostRule]] = {}
        self._suffixes: list[tuple[str, _HostRule]] = []
        for host, ports, endpoints in hosts:
            rule = _HostRule(ports, endpoints)
            if host.startswith("*."):
                self._suffixes.append((host[1:], rule))
            else:
                self._exact.setdefault(host, []).append(rule)
        # The longest suffix first: *.eu.example.com before *.example.com.
        self._suffixes.sort(key=lambda entry: -len(entry[0]))
        self._services: dict[bytes, Any] = {}

    @classmethod
    def from_snapshot(cls, raw: object, where: str) -> EgressPolicy:
        if raw is None:
            return cls("ALLOW_ANY", [])
        if not isinstance(raw, Mapping):
            raise SnapshotError(f"{where}: expected an object")
        mode = raw.get("mode", "ALLOW_ANY")
        if mode not in ("ALLOW_ANY", "REGISTRY_ONLY"):
            raise SnapshotError(f"{where}.mode: expected ALLOW_ANY or REGISTRY_ONLY")
        hosts = raw.get("hosts", [])
        if not isinstance(hosts, list):
            raise SnapshotError(f"{where}.hosts: expected a list")
        compiled = []
        for i, entry in enumerate(hosts):
            host = entry.get("host") if isinstance(entry, Mapping) else None
            ports = entry.get("ports", []) if isinstance(entry, Mapping) else None
            if not isinstance(host, str) or not isinstance(ports, list) or not all(
                isinstance(p, int) and not isinstance(p, bool) for p in ports
            ):
                raise SnapshotError(f"{where}.hosts[{i}]: expected {{host, ports}}")
            endpoints = _endpoints(entry.get("endpoints", []), f"{where}.hosts[{i}].endpoints")
            compiled.append((host.lower(), frozenset(ports), endpoints))
        return cls(mode, compiled)

    def _rule(self, host: str, port: int) -> _HostRule | None:
        for rule in self._exact.get(host, ()):
            if rule.takes(port):
                return rule
        for suffix, rule in self._suffixes:
            if host.endswith(suffix) and rule.takes(port):
                return rule
        return None

    def where(self, host: str, port: int) -> tuple[Address, ...] | None:
        """Where a call to ``host:port`` that leaves the mesh connects: the endpoints of the
        ``Egress`` naming it, or the host itself (its name resolved when connecting); None
        when the mesh does not let it leave (``REGISTRY_ONLY`` and no ``Egress`` names it)."""
        rule = self._rule(host, port)
        if rule is None:
            return ((host, port),) if self.mode == "ALLOW_ANY" else None
        if rule.endpoints:
            return tuple((address, p or port) for address, p in rule.endpoints)
        return ((host, port),)

    def allows(self, host: str, port: int) -> bool:
        """Whether a call to ``host:port`` may leave the mesh."""
        return self.where(host, port) is not None

    def service(
        self, authority: bytes, make: Callable[[str, int, list[EndpointState]], Any]
    ) -> Any:
        """The external service for ``authority`` (made by ``make(host, port, endpoints)`` on
        first use), or None when the mesh does not let it leave, or it names no host."""
        found = self._services.get(authority)
        if found is not None:
            return found
        named = external_host(authority.decode("latin-1"))
        if named is None:
            return None
        host, port = named
        addresses = self.where(host, port)
        if addresses is None:
            return None
        endpoints = [EndpointState(EndpointAddr(a, p), {}) for a, p in addresses]
        service = make(host, port, endpoints)
        if len(self._services) >= MAX_EXTERNAL:
            self._services.clear()
        self._services[authority] = service
        return service


def _endpoints(raw: object, where: str) -> tuple[Address, ...]:
    """An ``Egress`` host's ``endpoints``: (address, port or 0)."""
    if not isinstance(raw, list):
        raise SnapshotError(f"{where}: expected a list")
    found: list[Address] = []
    for i, entry in enumerate(raw):
        address = entry.get("address") if isinstance(entry, Mapping) else None
        port = entry.get("port") if isinstance(entry, Mapping) else None
        if not isinstance(address, str) or not address or not (
            port is None or (isinstance(port, int) and not isinstance(port, bool)
                             and 0 < port < 65536)
        ):  # fmt: skip
            raise SnapshotError(f"{where}[{i}]: expected {{address, port}}")
        found.append((address, port or 0))
    return tuple(found)
