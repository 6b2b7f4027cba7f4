"""Connection-pool limits of a service (circuit breaking), as the pool consults them.

Each limit is 0 for unlimited. The pool asks before opening a connection (``can_open``),
before queueing a request that finds no idle connection (``can_queue``; a refusal is answered
fast with 503 and ``x-gossamer-error: overflow``), and after each response whether a
connection has served its quota (``connection_exhausted``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gossamer.proxy.resilience.fields import obj, opt_int

__all__ = ["UNLIMITED", "ConnectionLimits"]


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Per-service (per-proxy) limits; 0 means unlimited for each field."""

    max_connections: int = 0
    max_pending: int = 0
    max_requests_per_connection: int = 0

    @classmethod
    def from_snapshot(cls, d: Any, where: str) -> ConnectionLimits:
        """Compile ``{"max_connections", "max_pending", "max_requests_per_connection"}``
        (absent fields are 0); ``SnapshotError`` names a bad field."""
        d = obj(d, where)
        return cls(
            max_connections=opt_int(d, "max_connections", where, default=0),
            max_pending=opt_int(d, "max_pending", where, default=0),
            max_requests_per_connection=opt_int(d, "max_requests_per_connection", where, default=0),
        )

    @property
    def unlimited(self) -> bool:
        """True when no limit is set (the pool can skip all checks)."""
        return not (self.max_connections or self.max_pending or self.max_requests_per_connection)

    def can_open(self, open_now: int) -> bool:
        """Whether one more connection may be opened while ``open_now`` are open."""
        return not self.max_connections or open_now < self.max_connections

    def can_queue(self, pending_now: int) -> bool:
        """Whether one more request may wait while ``pending_now`` are waiting."""
        return not self.max_pending or pending_now < self.max_pending

    def connection_exhausted(self, requests_served: int) -> bool:
        """Whether a connection that served this many requests must not take another."""
        limit = self.max_requests_per_connection
        return limit > 0 and requests_served >= limit


UNLIMITED = ConnectionLimits()
