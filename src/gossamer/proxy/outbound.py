"""Outbound direction: requests from the local app to other mesh services.

The app sends plain HTTP/1.1 to the sidecar's outbound port, directly or as ``HTTP_PROXY``
(absolute-form targets). The sidecar finds the service from the target or ``Host``
(``catalog``, ``catalog.default``, ``catalog.default.svc``), discovers it on demand from the
control plane when it is not yet in the route table, picks an endpoint, and sends the request
over a pooled mTLS connection that was checked to carry the service's SPIFFE ID.
"""

from __future__ import annotations

import time

from gossamer.protocol.http1 import HeadScan, ProxyError, split_absolute_target
from gossamer.proxy.downstream import DownstreamConnection
from gossamer.proxy.exchange import Exchange
from gossamer.proxy.routing import OutboundService, service_key
from gossamer.proxy.tasks import spawn

__all__ = ["OutboundConnection"]

MAX_CONNECT_ATTEMPTS = 3


class OutboundConnection(DownstreamConnection):
    direction = "outbound"
    drop_headers = frozenset({b"x-gossamer-peer-identity"})

    def request_head(self, ex: Exchange, scan: HeadScan) -> bytes:
        authority, path = split_absolute_target(ex.target)
        headers = scan.kept
        if authority is not None:
            if scan.host is not None:
                headers = [(n, v) for n, v in headers if n.lower() != b"host"]
            headers.append((b"host", authority))
            scan.host = authority
        elif scan.host is None:
            if not ex.http10:
                raise ProxyError(400, "bad-request", "missing Host header")
            scan.host = b""
        ex.target = scan.host  # from here on, target holds the authority used for routing
        scan.kept = headers
        self.keep_head(ex, path, scan)
        return b""  # rendered when routed: route filters may change the path and headers

    def dispatch(self, ex: Exchange) -> None:
        table = self.proxy.table
        if table is None:
            self.respond_error(
                ex, 503, "proxy-not-ready", "no configuration from the control plane yet"
            )
            return
        service = table.resolve(ex.target)
        if service is not None:
            self.send_to(ex, service)
            return
        key = service_key(ex.target.decode("latin-1"), table.namespace)
        if key is None or key in table.unknown:
            self.respond_error(
                ex, 404, "unknown-service", f"{ex.target.decode('latin-1')} is not a mesh service"
            )
            return
        spawn(self._discover(ex, key), name=f"discover {key}")

    async def _discover(self, ex: Exchange, key: str) -> None:
        try:
            service = await self.proxy.discover(key)
        except ProxyError as exc:
            self.respond_error(ex, exc.status, exc.cause, exc.detail)
            return
        if self.closed:
            return
        if service is None:
            self.respond_error(ex, 404, "unknown-service", f"{key} is not a mesh service")
        else:
            self.send_to(ex, service)

    def send_to(self, ex: Exchange, service: OutboundService, attempt: int = 0) -> None:
        if not ex.head:
            ex.head = self.render_head(ex)
        endpoint = service.balancer.pick()
        ex.stats = service.stats
        if endpoint is None:
            self.respond_error(
                ex, 503, "no-healthy-endpoints", f"{service.key} has no healthy endpoints"
            )
            return
        endpoint.pending += 1
        ex.endpoint = endpoint
        key = (endpoint.addr.host, endpoint.addr.port)
        upstream = self.proxy.outbound_pool.take(key)
        if upstream is not None:
            upstream.send(ex, self)
        else:
            spawn(self._connect(ex, service, key, attempt), name=f"connect {service.key}")

    def retry(self, ex: Exchange) -> None:
        endpoint = ex.endpoint
        service = self.proxy.table.resolve(ex.target) if self.proxy.table else None
        if endpoint is None or service is None:
            self.respond_error(ex, 502, "upstream-reset", "connection lost before a response")
            return
        key = (endpoint.addr.host, endpoint.addr.port)
        spawn(self._connect(ex, service, key, 1), name=f"reconnect {service.key}")

    async def _connect(
        self, ex: Exchange, service: OutboundService, key: tuple[str, int], attempt: int = 0
    ) -> None:
        try:
            upstream = await self.proxy.outbound_pool.connect(
                key, sni=service.sni, identity=service.identity
            )
        except ProxyError as exc:
            endpoint = ex.endpoint
            if endpoint is not None:
                endpoint.penalise(time.monotonic_ns())
                endpoint.pending -= 1
                ex.endpoint = None
            # Nothing was sent: another endpoint can take the request safely.
            if (
                exc.cause == "connect-failed"
                and attempt < MAX_CONNECT_ATTEMPTS - 1
                and len(service.balancer.endpoints) > 1
                and not self.closed
            ):
                self.send_to(ex, service, attempt + 1)
                return
            self.respond_error(ex, exc.status, exc.cause, exc.detail)
            return
        self.attach(ex, upstream)
