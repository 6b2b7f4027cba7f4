"""Calls to hosts outside the mesh (``snapshot.outbound.egress``; ``gossamer.config.egress``).

A host that is no mesh service leaves the mesh from this sidecar, over plain HTTP to the host
itself, when the mesh allows it: ``ALLOW_ANY`` (any host), or ``REGISTRY_ONLY`` and an
``Egress`` names it (exact, ``*.suffix``, or an IP address; with its ports, or any port).
``EgressPolicy.service`` gives such a host an ``OutboundService`` of its own (one endpoint:
the host and port as named; the name is resolved when connecting), cached per authority and
bounded, so that the pipeline's concrete and endpoint stages, metrics and limits treat it as
any other destination (``external``: its connections are plain, from their own pool).
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


class EgressPolicy:
    """The mode and the hosts an ``Egress`` names, as compiled from a snapshot."""

    __slots__ = ("_exact", "_services", "_suffixes", "mode")

    def __init__(self, mode: str, hosts: list[tuple[str, frozenset[int]]]) -> None:
        self.mode = mode
        self._exact: dict[str, frozenset[int]] = {}
        self._suffixes: list[tuple[str, frozenset[int]]] = []
        for host, ports in hosts:  # an empty set of ports: any port
            if host.startswith("*."):
                self._suffixes.append((host[1:], ports))
            elif host not in self._exact:
                self._exact[host] = ports
            elif self._exact[host] and ports:
                self._exact[host] = self._exact[host] | ports
            else:
                self._exact[host] = frozenset()
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
            compiled.append((host.lower(), frozenset(ports)))
        return cls(mode, compiled)

    def allows(self, host: str, port: int) -> bool:
        """Whether a call to ``host:port`` may leave the mesh."""
        if self.mode == "ALLOW_ANY":
            return True
        ports = self._exact.get(host)
        if ports is not None and (not ports or port in ports):
            return True
        return any(
            host.endswith(suffix) and (not ports or port in ports)
            for suffix, ports in self._suffixes
        )

    def service(self, authority: bytes, make: Callable[[str, int, EndpointState], Any]) -> Any:
        """The external service for ``authority`` (made by ``make(host, port, endpoint)`` on
        first use), or None when the mesh does not let it leave, or it names no host."""
        found = self._services.get(authority)
        if found is not None:
            return found
        named = external_host(authority.decode("latin-1"))
        if named is None or not self.allows(*named):
            return None
        host, port = named
        service = make(host, port, EndpointState(EndpointAddr(host, port), {}))
        if len(self._services) >= MAX_EXTERNAL:
            self._services.clear()
        self._services[authority] = service
        return service
