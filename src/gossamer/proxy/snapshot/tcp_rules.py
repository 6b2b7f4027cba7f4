"""TCP routes as the sidecar holds them: weighted backends for new connections, and the drain
rule for connections opened under an earlier route (sans-IO; internals §8, ``tcp_route``).

``TcpRoute.from_snapshot`` compiles the snapshot form once per config version. A connection
stays wanted as long as its backend is still a backend (with a weight above 0) of its service's
current route, or, when the service has no route, is the service itself. When a new snapshot
stops wanting it, it is closed after the drain deadline (the new route's ``drain_ms``; the old
route's when the route was removed).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gossamer.proxy.snapshot.errors import SnapshotError

__all__ = ["TcpBackend", "TcpRoute", "still_routed"]

DEFAULT_DRAIN_MS = 30_000


@dataclass(frozen=True, slots=True)
class TcpBackend:
    """One weighted destination: ``service_key`` is ``name.namespace``."""

    service_key: str
    weight: int


@dataclass(frozen=True, slots=True)
class TcpRoute:
    """The compiled ``tcp_route`` of one service."""

    backends: tuple[TcpBackend, ...]
    drain: float  # seconds

    @classmethod
    def from_snapshot(cls, raw: Any, where: str) -> TcpRoute | None:
        """Compile ``raw`` (the snapshot's ``tcp_route``, possibly null); raise
        ``SnapshotError`` naming ``where`` and the field for anything malformed."""
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise SnapshotError(f"{where}: expected an object or null")
        raw_backends = raw.get("backends")
        if not isinstance(raw_backends, list) or not raw_backends:
            raise SnapshotError(f"{where}.backends: expected a non-empty list")
        backends: list[TcpBackend] = []
        seen: set[str] = set()
        for i, item in enumerate(raw_backends):
            at = f"{where}.backends[{i}]"
            if not isinstance(item, Mapping):
                raise SnapshotError(f"{at}: expected an object")
            service = item.get("service")
            if not isinstance(service, str) or service.count(".") != 1 or "" in service.split("."):
                raise SnapshotError(f"{at}.service: expected 'name.namespace', got {service!r}")
            weight = item.get("weight", 1)
            if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
                raise SnapshotError(f"{at}.weight: expected an integer >= 0, got {weight!r}")
            if service in seen:
                raise SnapshotError(f"{at}.service: {service} is listed twice")
            seen.add(service)
            backends.append(TcpBackend(service, weight))
        if not any(b.weight > 0 for b in backends):
            raise SnapshotError(f"{where}.backends: at least one weight must be above 0")
        drain_ms = raw.get("drain_ms", DEFAULT_DRAIN_MS)
        if not isinstance(drain_ms, int) or isinstance(drain_ms, bool) or drain_ms < 0:
            raise SnapshotError(f"{where}.drain_ms: expected an integer >= 0, got {drain_ms!r}")
        return cls(tuple(backends), drain_ms / 1000.0)

    def pick(self, rng: random.Random) -> str:
        """The backend for one new connection, by weight."""
        total = sum(b.weight for b in self.backends)
        point = rng.random() * total
        for backend in self.backends:
            if backend.weight > 0:
                point -= backend.weight
                if point < 0:
                    return backend.service_key
        return next(b.service_key for b in reversed(self.backends) if b.weight > 0)

    def weight_of(self, service_key: str) -> int:
        for backend in self.backends:
            if backend.service_key == service_key:
                return backend.weight
        return 0


def still_routed(route: TcpRoute | None, service_key: str, backend_key: str) -> bool:
    """Whether a connection of ``service_key`` that went to ``backend_key`` is still wanted
    under ``route`` (the service's current route; None: connections go to the service itself)."""
    if route is None:
        return backend_key == service_key
    return route.weight_of(backend_key) > 0
