"""Connection limits (circuit breaking) of a service, adapted to HTTP/2 multiplexing.

HTTP/1.1 carries one request per connection at a time, so there ``max_connections`` bounds
the requests in flight to a service and ``max_pending`` the requests waiting for a connection.
HTTP/2 multiplexes every stream to an endpoint onto one connection, so counting connections
would bound nothing. The same ``ConnectionLimits`` therefore read, for HTTP/2 streams from
this sidecar to one service (summed over all its endpoints and all client connections):

- ``max_connections``: streams in flight (from the route stage until the stream is done,
  retries included), i.e. the same bound on concurrent requests the backend sees over
  HTTP/1.1. Istio's ``http2MaxRequests`` plays this part in Envoy; the snapshot has no such
  field, and one limit that means "requests in flight" for both protocols is what a
  ``TrafficPolicy`` author expects when callers mix them.
- ``max_pending``: streams waiting for a free slot, served first come first served as slots
  free up; beyond it a stream is answered at once with 503 and ``x-gossamer-error: overflow``
  (gRPC: ``UNAVAILABLE``). 0 means no bound on the queue, as for HTTP/1.1. Without
  ``max_connections`` nothing waits, so ``max_pending`` alone has no effect.
- ``max_requests_per_connection``: a connection to an endpoint that has carried this many
  streams stops taking new ones (GOAWAY; those in flight finish), and the next stream opens a
  new connection.

The accounts (``StreamAccount``, one per service key, kept by the sidecar's HTTP/2 runtime)
outlive snapshots; the limits are read from the current snapshot at each admission. Mirrored
copies take a slot when one is free and are skipped otherwise; they never wait.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gossamer.proxy.h2.stream import ProxiedStream
    from gossamer.proxy.resilience.limits import ConnectionLimits

__all__ = ["ADMITTED", "OVERFLOW", "QUEUED", "StreamAccount"]

ADMITTED = 0
QUEUED = 1
OVERFLOW = 2


class StreamAccount:
    """HTTP/2 streams in flight to one service and streams waiting for a slot."""

    __slots__ = ("active", "pending")

    def __init__(self) -> None:
        self.active = 0
        self.pending: deque[ProxiedStream] = deque()

    def admit(self, stream: ProxiedStream, limits: ConnectionLimits) -> int:
        """``ADMITTED`` (a slot taken), ``QUEUED`` (``stream`` waits) or ``OVERFLOW``."""
        if self.active < limits.max_connections:
            self.active += 1
            return ADMITTED
        if not limits.can_queue(len(self.pending)):
            return OVERFLOW
        self.pending.append(stream)
        return QUEUED

    def take(self, limits: ConnectionLimits) -> bool:
        """Take a slot only if one is free now (a mirrored copy never waits)."""
        if self.active < limits.max_connections and not self.pending:
            self.active += 1
            return True
        return False

    def leave(self, stream: ProxiedStream, queued: bool) -> None:
        """``stream`` is done: its slot (or its place in the queue) is given up."""
        if queued:
            with contextlib.suppress(ValueError):
                self.pending.remove(stream)
            return
        self.active -= 1
        while self.pending:
            waiting = self.pending.popleft()
            plan = waiting.plan
            if plan is None or not waiting.wanted():
                continue
            plan.queued = False
            self.active += 1
            waiting.down.reroute(waiting)
            return
