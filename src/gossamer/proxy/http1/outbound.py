"""Outbound HTTP/1.1: requests from the local app to other mesh services.

The app sends plain HTTP/1.1 to the sidecar's outbound port, directly or as ``HTTP_PROXY``
(absolute-form targets), or opens a CONNECT tunnel (``http1.connect``: inside one, what the
client speaks is served as here, every request going to the CONNECT authority, the
``pinned`` destination). This connection detects HTTP/2 prior knowledge (h2c goes to
``proxy/h2/``), parses each request into an ``Exchange`` and hands it to the outbound
pipeline (``pipeline.outbound``: discovery, the request slots, the logical stage). What stays
here is HTTP/1.1's part of the concrete and endpoint stages: connection limits (circuit
breaking: beyond max pending, a fast 503 ``overflow``), pooled mTLS connections checked to
carry the backend's SPIFFE ID, the per-try and whole-request timers, and sending a request
again when ``pipeline.retries`` allows it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import ClassVar

import httptools

from gossamer.protocol.http1 import HeadScan, ProxyError, connect_target, split_absolute_target
from gossamer.proxy.h2 import H2_PREFACE, hand_over_outbound
from gossamer.proxy.http1.connect import open_tunnel
from gossamer.proxy.http1.downstream import PAUSE_BUFFER, PAUSE_UPGRADE, DownstreamConnection
from gossamer.proxy.http1.exchange import Exchange
from gossamer.proxy.http1.mirror import send_copy
from gossamer.proxy.http1.upstream import UpstreamConnection
from gossamer.proxy.local_peers import foreign_user
from gossamer.proxy.pipeline import concrete, outbound, retries
from gossamer.proxy.pipeline.balancer import EndpointState
from gossamer.proxy.resilience.outlier import classify
from gossamer.proxy.snapshot.http_rules import MirrorPolicy
from gossamer.proxy.snapshot.table import OutboundService
from gossamer.proxy.tasks import spawn
from gossamer.proxy.tcp.relay import Relay

__all__ = ["OutboundConnection"]

log = logging.getLogger("gossamer.proxy")

CONNECT_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
# A TLS fatal alert (handshake_failure), for a ClientHello sent through a tunnel to an HTTP
# port: the mesh encrypts between sidecars; the client should ask for http:// instead.
TLS_HANDSHAKE_FAILURE = b"\x15\x03\x01\x00\x02\x02\x28"


class OutboundConnection(DownstreamConnection):
    direction = "outbound"
    drop_headers: ClassVar[frozenset[bytes]] = frozenset({b"x-gossamer-peer-identity"})
    sniffed: bytes | None = b""  # first bytes while they may still be the HTTP/2 preface
    wants_host = True
    # Inside a CONNECT tunnel to a mesh service's HTTP port: the CONNECT authority, where
    # every request on this connection goes (whatever its Host says).
    pinned: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        allowed = self.proxy.local_uids
        if allowed is not None:  # only the app's user may act as the workload
            refusal = foreign_user(allowed, transport)
            if refusal:
                log.info("refusing a local connection to the outbound port: %s", refusal)
                self.proxy.metrics.error("outbound", "local-peer-refused")
                transport.abort()  # type: ignore[attr-defined]

    # === detect: HTTP/2 prior knowledge (h2c) goes to the HTTP/2 path ===

    def data_received(self, data: bytes) -> None:
        if self.sniffed is not None:
            data = self.sniffed + data
            if len(data) < len(H2_PREFACE) and H2_PREFACE.startswith(data):
                self.sniffed = data
                return
            self.sniffed = None
            if data.startswith(H2_PREFACE) and self.transport is not None:
                hand_over_outbound(self, self.transport, data, self.pinned)
                return
            if self.pinned is not None and data[0] == 0x16:  # a TLS record: a ClientHello
                self._tls_in_tunnel()
                return
        super().data_received(data)

    def _tls_in_tunnel(self) -> None:
        pinned = self.pinned or b""
        log.info(
            "TLS inside a CONNECT tunnel to %s, an HTTP port: the mesh encrypts between "
            "sidecars, so call it with http:// (or declare the port tcp)",
            pinned.decode("latin-1"),
        )
        self.proxy.metrics.error("outbound", "tls-in-http-tunnel")
        self.write(TLS_HANDSHAKE_FAILURE)
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # === parse: the request as the pipeline sees it ===

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
        ex.authority = scan.host if self.pinned is None else self.pinned
        scan.kept = headers
        self.keep_head(ex, path, scan)
        return b""  # rendered when routed: route filters may change the path and headers

    def plain_head(
        self, ex: Exchange, head: bytes, host: bytes | None, request_id: bytes | None
    ) -> bytes:
        if host is None:
            raise ProxyError(400, "bad-request", "missing Host header")
        ex.path = ex.target
        ex.authority = host if self.pinned is None else self.pinned
        lines = head[head.find(b"\r\n") :]
        if request_id is None:
            request_id = self.proxy.new_request_id()
            lines += b"\r\nx-request-id: " + request_id
        ex.request_id = request_id
        ex.plain = lines
        return b""  # rendered when routed, like the full path's head

    def dispatch(self, ex: Exchange) -> None:
        if self.upgrading is ex and ex.method == b"CONNECT":
            spawn(open_tunnel(self, ex), name="connect tunnel")
            return
        outbound.start(ex, self.proxy)

    # === CONNECT (http1.connect opens the tunnel) ===

    def connect_head(self, ex: Exchange) -> None:
        if self.proxy.settings.listen.default_service is not None:
            # A gateway serves clients from outside the mesh: never a tunnel into it.
            raise ProxyError(400, "bad-request", "a gateway does not open CONNECT tunnels")
        if self.pinned is not None:
            raise ProxyError(400, "bad-request", "CONNECT inside a CONNECT tunnel")
        if self.queue:
            raise ProxyError(400, "bad-request", "CONNECT behind a pipelined request")
        if ex.has_body:
            raise ProxyError(400, "bad-request", "a CONNECT request has no content")
        connect_target(ex.target)  # refuses anything but host:port
        ex.authority = ex.target
        ex.request_id = self.proxy.new_request_id()

    def tunnel_http(self, ex: Exchange) -> None:
        """The tunnel goes to a mesh service's HTTP, HTTP/2 or gRPC port: answer 200, then
        serve what it carries as a new connection (detect, parse, the pipeline), with every
        request going to the CONNECT authority."""
        early = self._connect_answered(ex)
        self.pinned = ex.authority
        self.parsing = None
        self.parser = httptools.HttpRequestParser(self)
        self.sniffed = b""
        self._resume(PAUSE_UPGRADE)
        if early:
            self.data_received(early)

    def tunnel_relay(self, ex: Exchange, relay: Relay) -> None:
        """The tunnel goes to a TCP port or out of the mesh, and ``relay``'s upstream end is
        connected: answer 200 and give the connection to the relay."""
        early = self._connect_answered(ex)
        transport = self.transport
        self.closed = True
        self.transport = None
        self.uncounted()  # the relay counts now (TCP relays count toward the cap)
        self.drop_parsers()
        if transport is None:
            relay.close()
        else:
            relay.take_downstream(transport, early)

    def _connect_answered(self, ex: Exchange) -> bytes:
        """Answer CONNECT ``ex`` with 200 and end it; the bytes read after its head."""
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        self.upgrading = None
        early = b"".join(self.early) if self.early else b""
        self.early = None
        ex.status = 200
        ex.response_started = True
        self.write(CONNECT_ESTABLISHED)
        return early

    # === after the logical stage ===

    def forward(self, ex: Exchange, timeout: float | None) -> None:
        ex.head = self.render_head(ex)
        if timeout is not None:
            ex.timer = asyncio.get_running_loop().call_later(timeout, self._timed_out, ex)
        self.send_to(ex)

    def mirror(self, ex: Exchange, policy: MirrorPolicy) -> None:
        if ex.has_body and (not ex.body_done or ex.body_size > outbound.MAX_MIRROR_BODY):
            self.proxy.metrics.error("mirror", "mirror-skipped-body")
            return
        send_copy(self.proxy, ex, self.render_head(ex), policy)

    # === concrete (limits, balancer) and endpoint ===

    def send_to(self, ex: Exchange, avoid: EndpointState | None = None) -> None:
        """Pick an endpoint of ``ex.service`` and start the request there (or queue it while
        the service's connection limit is reached)."""
        service = ex.service
        assert service is not None
        endpoint = concrete.pick(service, ex.subset, ex, avoid)
        ex.stats = service.stats
        if endpoint is None:
            cause, detail = concrete.no_endpoint(service, ex.subset)
            self.respond_error(ex, 503, cause, detail)
            return
        key = endpoint.pool_key
        plain = service.plaintext(ex.authority, ex.scheme)
        pool = self.proxy.egress_pool if plain else self.proxy.outbound_pool
        upstream = pool.take(key)
        if upstream is not None:
            endpoint.pending += 1
            ex.endpoint = endpoint
            self.start_try(ex, upstream)
            return
        account = service.account
        limits = account.limits
        if not limits.can_open(account.open):
            if not limits.can_queue(len(account.pending)):
                self.respond_error(
                    ex, 503, "overflow", f"{service.key}: connection and pending limits reached"
                )
                return
            account.pending.append((self, ex))
            return
        self._open(ex, service, endpoint, 0)

    def _open(
        self, ex: Exchange, service: OutboundService, endpoint: EndpointState, attempt: int
    ) -> None:
        service.account.open += 1
        endpoint.pending += 1
        ex.endpoint = endpoint
        spawn(self._connect(ex, service, endpoint, attempt), name=f"connect {service.key}")

    def start_pending(self, ex: Exchange, upstream: UpstreamConnection) -> None:
        """A queued request gets a connection that just became idle."""
        endpoint = upstream.endpoint
        if endpoint is not None:
            endpoint.pending += 1
        ex.endpoint = endpoint
        self.start_try(ex, upstream)

    def start_try(self, ex: Exchange, upstream: UpstreamConnection) -> None:
        ex.tries += 1
        retry = ex.retry
        if retry is not None and retry.per_try_timeout is not None:
            ex.try_timer = asyncio.get_running_loop().call_later(
                retry.per_try_timeout, self._try_timed_out, ex, upstream
            )
        upstream.send(ex, self)

    async def _connect(
        self, ex: Exchange, service: OutboundService, endpoint: EndpointState, attempt: int
    ) -> None:
        plain = service.plaintext(ex.authority, ex.scheme)
        pool = self.proxy.egress_pool if plain else self.proxy.outbound_pool
        try:
            upstream = await pool.connect(
                endpoint.pool_key, sni=service.sni, identity=service.identity
            )
        except ProxyError as exc:
            self._connect_failed(ex, service, endpoint, attempt, exc)
            return
        upstream.account = service.account
        upstream.endpoint = endpoint
        if not self.wants(ex):
            endpoint.pending -= 1
            if not service.account.hand_over(upstream):
                pool.release(upstream)
            return
        self.start_try(ex, upstream)
        self._resume(PAUSE_BUFFER)

    def _connect_failed(
        self,
        ex: Exchange,
        service: OutboundService,
        endpoint: EndpointState,
        attempt: int,
        exc: ProxyError,
    ) -> None:
        endpoint.penalise(time.monotonic_ns())
        endpoint.pending -= 1
        if ex.endpoint is endpoint:
            ex.endpoint = None
        service.record_outcome(endpoint, "connect-failure")
        service.account.connection_closed()
        if not self.wants(ex):
            return
        if exc.cause == "connect-failed":
            # Nothing was sent: another endpoint can take the request safely.
            if attempt < concrete.MAX_CONNECT_ATTEMPTS - 1 and len(service.balancer.endpoints) > 1:
                other = concrete.pick(service, ex.subset, ex, endpoint)
                if other is None:
                    self.respond_error(ex, 503, "no-healthy-endpoints", service.key)
                else:
                    self._open(ex, service, other, attempt + 1)
                return
            if retries.may_retry(ex, cause=exc.cause):
                self._schedule_retry(ex)
                return
        self.respond_error(ex, exc.status, exc.cause, exc.detail)

    # === outcomes, retries and timeouts ===

    def on_response_status(self, ex: Exchange, status: int) -> bool:
        if ex.try_timer is not None:
            ex.try_timer.cancel()
            ex.try_timer = None
        service = ex.service
        endpoint = ex.endpoint
        if service is not None and endpoint is not None and service.policy.outlier is not None:
            service.record_outcome(endpoint, classify(status))
        return ex.retry is not None and retries.may_retry(ex, status=status)

    def retry_dropped(self, ex: Exchange) -> None:
        if ex.unprocessed:  # another endpoint, at once: nothing ran anywhere
            ex.unprocessed = False
            avoid = ex.endpoint
            self._release_endpoint(ex)
            self._retry_now(ex, avoid)
            return
        self._schedule_retry(ex)

    def not_processed(self, ex: Exchange, cause: str) -> bool:
        """The destination's sidecar says no app saw the request: eject that endpoint for a
        while and, when the request can be sent again (no body, or all of it kept), take it
        to another endpoint, bounded by the tries and the retry budget (issue 12)."""
        service = ex.service
        endpoint = ex.endpoint
        if service is None or endpoint is None:
            return False
        resendable = not ex.has_body or (ex.body_done and ex.replay is not None)
        if not retries.may_reroute(ex, service, endpoint, ex.tries, resendable):
            return False
        ex.unprocessed = True
        if ex.try_timer is not None:
            ex.try_timer.cancel()
            ex.try_timer = None
        return True

    def upstream_failed(self, ex: Exchange, cause: str, detail: str, *, reused: bool) -> None:
        if ex.try_timer is not None:
            ex.try_timer.cancel()
            ex.try_timer = None
        service = ex.service
        endpoint = ex.endpoint
        if service is not None and endpoint is not None:
            service.record_outcome(endpoint, classify(None, cause))
        if reused and not ex.has_body and not self.closed and ex.tries <= 1:
            # An idle pooled connection the upstream had just closed: not the request's fault.
            self._release_endpoint(ex)
            ex.body = None
            self.send_to(ex)
            return
        if retries.may_retry(ex, cause=cause):
            self._schedule_retry(ex)
            return
        if endpoint is not None:
            endpoint.penalise(time.monotonic_ns())
        if (
            cause == "upstream-reset"
            and service is not None
            and not ex.has_body
            and not self.closed
            and retries.may_resend_elsewhere(ex, service, ex.tries)
        ):
            # A safe request its destination dropped unanswered: another endpoint, once.
            self._release_endpoint(ex)
            self._retry_now(ex, endpoint)
            return
        status = 504 if cause == "upstream-timeout" else 502
        self.respond_error(ex, status, cause, detail)

    def _schedule_retry(self, ex: Exchange) -> None:
        avoid = ex.endpoint
        self._release_endpoint(ex)
        delay = retries.backoff(ex)
        asyncio.get_running_loop().call_later(delay, self._retry_now, ex, avoid)

    def _retry_now(self, ex: Exchange, avoid: EndpointState | None) -> None:
        if not self.wants(ex):
            return
        ex.body = list(ex.replay) if ex.replay else None
        self.send_to(ex, avoid)

    def _release_endpoint(self, ex: Exchange) -> None:
        endpoint = ex.endpoint
        if endpoint is not None:
            endpoint.pending -= 1
            ex.endpoint = None

    def _try_timed_out(self, ex: Exchange, upstream: UpstreamConnection) -> None:
        ex.try_timer = None
        if ex.upstream is not upstream or ex.response_started:
            return
        upstream.exchange = None
        upstream.downstream = None
        ex.upstream = None
        upstream.close()
        self.upstream_failed(ex, "upstream-timeout", "per-try timeout", reused=False)

    def _timed_out(self, ex: Exchange) -> None:
        ex.timer = None
        if self.closed or not self.queue or ex not in self.queue:
            return
        upstream = ex.upstream
        if upstream is not None:
            upstream.exchange = None
            upstream.downstream = None
            ex.upstream = None
            upstream.close()
        if ex.response_started:
            self.abort_response(ex, "upstream-timeout")
            return
        self.respond_error(ex, 504, "upstream-timeout", "the request timeout passed")
