"""Mirrored copies of HTTP/1.1 requests: fire and forget, the response read and thrown away.

``send_copy`` sends a copy of a whole (small) request to a route's mirror backend on the
sidecar's pooled connections, so the caller's response and latency never depend on the
mirror. The copy's response goes into a ``MirrorSink``, a ``ResponseSink`` with no client:
its bytes are dropped, its status is recorded in the mirror backend's route stats and its
outcome heard by outlier detection, its failures only count in the error metrics (direction
``mirror``). The backend's connection limit holds for copies too: a copy that would exceed it
is dropped (``overflow``), never queued. The same rules hold for HTTP/2 (``h2/mirror.py``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gossamer.protocol.http1 import ProxyError
from gossamer.proxy.http1.exchange import Exchange
from gossamer.proxy.http1.sink import ResponseSink, response_started
from gossamer.proxy.pipeline import concrete
from gossamer.proxy.resilience.outlier import classify
from gossamer.proxy.tasks import spawn

if TYPE_CHECKING:
    from gossamer.proxy.http1.upstream import Pool, UpstreamConnection
    from gossamer.proxy.pipeline.balancer import EndpointState
    from gossamer.proxy.snapshot.http_rules import MirrorPolicy
    from gossamer.proxy.snapshot.table import OutboundService
    from gossamer.proxy.state import ProxyState

__all__ = ["MirrorSink", "send_copy"]


def send_copy(proxy: ProxyState, ex: Exchange, head: bytes, policy: MirrorPolicy) -> None:
    """Send a copy of ``ex`` (whose body arrived whole) with request head ``head``."""
    table = proxy.table
    target = table.services.get(policy.service_key) if table is not None else None
    if target is None:
        proxy.metrics.error("mirror", "mirror-unknown-service")
        return
    copy = Exchange(time.monotonic_ns(), ex.down)
    copy.method = ex.method
    copy.path = ex.path
    copy.request_id = ex.request_id
    copy.is_head = ex.is_head
    copy.has_body = ex.has_body
    copy.chunked = ex.chunked
    copy.body_done = True
    copy.body = list(ex.body) if ex.body else None
    copy.head = head
    copy.service = target
    copy.stats = target.stats
    MirrorSink(proxy).send(copy, target, policy.backend.subset_key)


class MirrorSink(ResponseSink):
    """Takes the response to one mirrored copy and drops it."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy
        self.done = False

    def send(
        self, copy: Exchange, target: OutboundService, subset: tuple[tuple[str, str], ...]
    ) -> None:
        endpoint = concrete.pick(target, subset, None)
        if endpoint is None:
            self._failed(copy, "no-healthy-endpoints")
            return
        endpoint.pending += 1
        copy.endpoint = endpoint
        upstream = self._pool(copy, target).take(endpoint.pool_key)
        if upstream is not None:
            upstream.send(copy, self)
            return
        account = target.account
        if not account.limits.can_open(account.open):
            self._failed(copy, "overflow")
            return
        account.open += 1
        spawn(self._connect(copy, target, endpoint), name=f"mirror {target.key}")

    async def _connect(
        self, copy: Exchange, target: OutboundService, endpoint: EndpointState
    ) -> None:
        try:
            upstream = await self._pool(copy, target).connect(
                endpoint.pool_key, sni=target.sni, identity=target.identity
            )
        except ProxyError as exc:
            target.account.connection_closed()
            target.record_outcome(endpoint, "connect-failure")
            self._failed(copy, exc.cause)
            return
        upstream.account = target.account
        upstream.endpoint = endpoint
        upstream.send(copy, self)

    def _pool(self, copy: Exchange, target: OutboundService) -> Pool:
        """Plain connections for a target that takes plaintext (DISABLE), else mTLS."""
        if target.plaintext(copy.authority, copy.scheme):
            return self.proxy.egress_pool
        return self.proxy.outbound_pool

    def _failed(self, copy: Exchange, cause: str) -> None:
        self.proxy.metrics.error("mirror", cause)
        self.response_complete(copy)

    # === ResponseSink: everything is read, nothing is forwarded ===

    def write(self, data: bytes) -> None:
        pass

    def hold(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def on_response_status(self, ex: Exchange, status: int) -> bool:
        service = ex.service
        endpoint = ex.endpoint
        if service is not None and endpoint is not None and service.policy.outlier is not None:
            service.record_outcome(endpoint, classify(status))
        return False

    def retry_dropped(self, ex: Exchange) -> None:
        self.response_complete(ex)

    def not_processed(self, ex: Exchange, cause: str) -> bool:
        return False  # a copy is never sent twice

    def response_head(self, ex: Exchange, head: bytes) -> None:
        response_started(ex)

    def response_complete(self, ex: Exchange) -> None:
        if self.done:
            return
        self.done = True
        stats = ex.stats
        if stats is not None and ex.status:
            stats.record(ex.status, time.monotonic_ns() - ex.start_ns)
        endpoint = ex.endpoint
        if endpoint is not None:
            endpoint.pending -= 1
            ex.endpoint = None

    def upstream_failed(self, ex: Exchange, cause: str, detail: str, *, reused: bool) -> None:
        service = ex.service
        endpoint = ex.endpoint
        if service is not None and endpoint is not None:
            service.record_outcome(endpoint, classify(None, cause))
        self._failed(ex, cause)

    def abort_response(self, ex: Exchange, cause: str) -> None:
        self._failed(ex, cause)

    def start_tunnel(self, ex: Exchange, upstream: UpstreamConnection) -> None:
        upstream.close()  # copies are never upgrade requests; close anything that says 101
        self._failed(ex, "upgrade-not-supported")

    def pause_for_upstream(self) -> None:
        pass

    def resume_for_upstream(self) -> None:
        pass
