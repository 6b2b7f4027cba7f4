"""The access log, in the ``observe`` slot of both directions: one line per request.

``AccessLogStage`` is there only when this workload's config has an access log
(``snapshot.access_log``), so a sidecar without one pays nothing. On each completion it hands
the writer (``observe/access_log.py``) the request's raw values: when it started, the
direction, protocol, method, authority, path, status, the proxy's own error cause
(``x-gossamer-error``, when it answered or cut the request itself), body bytes each way, the
duration, the service (the destination outbound, this workload inbound), the upstream (the
endpoint chosen, or the local app), the peer's SPIFFE ID (the identity the destination must
prove outbound, the caller's proven one inbound), the request id, the trace id and the user
agent. Formatting and writing happen on the writer's thread.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gossamer.proxy.pipeline.slots import Stage

if TYPE_CHECKING:
    from gossamer.proxy.observe.access_log import AccessLog
    from gossamer.proxy.pipeline.call import Call

__all__ = ["AccessLogStage"]


class AccessLogStage(Stage):
    """Hands each completed request to the access log writer (see the module docstring)."""

    slot = "observe"
    name = "access log"
    sees_completions = True

    def __init__(self, log: AccessLog, direction: str, service: str, app: str) -> None:
        self.log = log
        self.direction = direction
        self.outbound = direction == "outbound"
        self.service = service  # this workload
        self.app = app  # the local app's address (the inbound upstream)

    def on_complete(self, call: Call) -> None:
        elapsed = time.monotonic_ns() - call.start_ns
        peer: str | bytes  # (bytes: written as their Latin-1 text)
        if self.outbound:
            target = call.service
            service = target.name if target is not None else ""
            peer = target.identity if target is not None else ""
            endpoint = call.endpoint
            upstream = f"{endpoint.addr.host}:{endpoint.addr.port}" if endpoint is not None else ""
        else:
            service, peer, upstream = self.service, call.peer, self.app
        self.log.add((
            time.time_ns() - elapsed, self.direction, call.protocol, call.method,
            call.authority, call.path, call.status, call.error, call.request_bytes,
            call.response_bytes, elapsed, service, upstream, peer, call.request_id,
            call.logged_trace_id(), call.user_agent(),
        ))  # fmt: skip
