"""The ``TCPRoute`` kind: weighted backends for connections to a TCP service (internals §8).

When the route changes, new connections go to the new backends at once; connections already
open keep flowing until they close or ``drainTimeout`` passes.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from gossamer.config.base import Resource, SpecModel
from gossamer.config.duration import duration_ms
from gossamer.config.traffic import (
    Duration,
    ServiceRef,
    Weight,
    duplicates,
    qualified_name,
    service_key,
)
from gossamer.snapshot_schema import TcpRouteSnapshot

__all__ = ["TCPBackend", "TCPRoute", "TCPRouteSpec"]


class TCPBackend(SpecModel):
    """A weighted destination service for new connections."""

    service: ServiceRef
    weight: Weight = 1


class TCPRouteSpec(SpecModel):
    """``spec`` of a TCPRoute."""

    service: ServiceRef
    backends: list[TCPBackend] = Field(min_length=1)
    drain_timeout: Duration = "30s"  # 0s: close old connections at once


class TCPRoute(Resource):
    """Where connections to one TCP service go (one per service: a second is refused)."""

    KIND: ClassVar[str] = "TCPRoute"
    PLURAL: ClassVar[str] = "tcproutes"

    kind: Literal["TCPRoute"]
    spec: TCPRouteSpec

    @property
    def service_key(self) -> tuple[str, str]:
        """``(namespace, name)`` of the service this route is for."""
        return service_key(self.spec.service, self.metadata.namespace)

    def references(self) -> set[tuple[str, str]]:
        """Every backend service as ``(namespace, name)``."""
        return {service_key(b.service, self.metadata.namespace) for b in self.spec.backends}

    def semantic_problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        backends = self.spec.backends
        if not any(backend.weight > 0 for backend in backends):
            out.append(("spec.backends", "at least one backend needs a weight above 0"))
        keys = [service_key(b.service, self.metadata.namespace) for b in backends]
        for index, first in duplicates(keys):
            out.append((f"spec.backends[{index}].service", f"repeats backends[{first}]"))
        return out

    def to_snapshot(self) -> TcpRouteSnapshot:
        """``tcp_route`` of the service's snapshot entry."""
        namespace = self.metadata.namespace
        return {
            "backends": [
                {"service": qualified_name(b.service, namespace), "weight": b.weight}
                for b in self.spec.backends
            ],
            "drain_ms": duration_ms(self.spec.drain_timeout),
        }
