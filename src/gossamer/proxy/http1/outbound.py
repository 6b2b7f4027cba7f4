"""Outbound direction: requests from the local app to other mesh services.

The app sends plain HTTP/1.1 to the sidecar's outbound port, directly or as ``HTTP_PROXY``
(absolute-form targets). Stages, after linkerd2-proxy's logical → concrete → endpoint:

- discover: the service from the target or ``Host`` (``catalog``, ``catalog.default``,
  ``catalog.default.svc``), asked of the control plane on first use;
- route (logical): the first matching HTTP rule: redirect, fault injection, header and path
  filters, a weighted backend (service and label subset), mirroring, timeout and retry policy;
- balance (concrete): an endpoint of the backend, skipping ejected outliers, within the
  service's connection limits (circuit breaking: beyond max pending, a fast 503 ``overflow``);
- endpoint: a pooled mTLS connection checked to carry the backend's SPIFFE ID.

Failures before a response are retried within the retry policy and the retry budget; a
per-try timeout counts as such a failure; the request timeout answers 504.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import ClassVar

from gossamer.protocol.http1 import HeadScan, ProxyError, split_absolute_target
from gossamer.proxy.h2 import H2_PREFACE, hand_over_outbound
from gossamer.proxy.http1.downstream import PAUSE_BUFFER, DownstreamConnection
from gossamer.proxy.http1.exchange import Exchange
from gossamer.proxy.http1.upstream import UpstreamConnection
from gossamer.proxy.pipeline.balancer import EndpointState
from gossamer.proxy.resilience.outlier import classify
from gossamer.proxy.snapshot.http_rules import HttpRule
from gossamer.proxy.snapshot.table import OutboundService, service_key
from gossamer.proxy.tasks import spawn

__all__ = ["OutboundConnection"]

MAX_CONNECT_ATTEMPTS = 3
MAX_MIRROR_BODY = 64 * 1024
_rng = random.Random()


class OutboundConnection(DownstreamConnection):
    direction = "outbound"
    drop_headers: ClassVar[frozenset[bytes]] = frozenset({b"x-gossamer-peer-identity"})
    sniffed: bytes | None = b""  # first bytes while they may still be the HTTP/2 preface
    wants_host = True

    # === detect: HTTP/2 prior knowledge (h2c) goes to the HTTP/2 path ===

    def data_received(self, data: bytes) -> None:
        if self.sniffed is not None:
            data = self.sniffed + data
            if len(data) < len(H2_PREFACE) and H2_PREFACE.startswith(data):
                self.sniffed = data
                return
            self.sniffed = None
            if data.startswith(H2_PREFACE) and self.transport is not None:
                hand_over_outbound(self, self.transport, data)
                return
        super().data_received(data)

    # === parse → discover ===

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

    def plain_head(
        self, ex: Exchange, head: bytes, host: bytes | None, request_id: bytes | None
    ) -> bytes:
        if host is None:
            raise ProxyError(400, "bad-request", "missing Host header")
        ex.path = ex.target
        ex.target = host  # from here on, target holds the authority used for routing
        lines = head[head.find(b"\r\n") :]
        if request_id is None:
            request_id = self.proxy.new_request_id()
            lines += b"\r\nx-request-id: " + request_id
        ex.request_id = request_id
        ex.plain = lines
        return b""  # rendered when routed, like the full path's head

    def dispatch(self, ex: Exchange) -> None:
        table = self.proxy.table
        if table is None:
            self.respond_error(
                ex, 503, "proxy-not-ready", "no configuration from the control plane yet"
            )
            return
        service = table.resolve(ex.target)
        if service is not None:
            self.route(ex, service)
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
            self.route(ex, service)

    # === route (logical) ===

    def route(self, ex: Exchange, service: OutboundService, delayed: bool = False) -> None:
        """Apply the matching rule (or the service defaults) and send."""
        policy = service.policy
        timeout = policy.timeout
        retry = policy.retry
        backend = service
        rule = ex.rule
        router = service.router
        if rule is None and not delayed and router is not None:
            headers = ex.header_list() if router.uses_headers else ex.headers
            rule = ex.rule = router.match(ex.method, ex.path, headers)
        if rule is not None:
            filters = rule.filters
            if not delayed:
                if filters.redirect is not None:
                    self._redirect(ex, rule)
                    return
                if filters.fault is not None:
                    delay, abort = filters.fault.decide(_rng)
                    if abort is not None:
                        self.respond_error(ex, abort, "fault-injected", f"route {rule.name}")
                        return
                    if delay > 0:
                        asyncio.get_running_loop().call_later(
                            delay, self._after_fault_delay, ex, service
                        )
                        return
                if filters.edits_request:
                    ex.headers = filters.request_headers(ex.header_list())
                ex.path = filters.rewrite_path(ex.path, rule)
            ref = rule.pick_backend(_rng)
            table = self.proxy.table
            chosen = table.services.get(ref.service_key) if table is not None else None
            if chosen is None:
                self.respond_error(
                    ex, 503, "no-healthy-endpoints", f"backend {ref.service_key} is not known"
                )
                return
            backend = chosen
            ex.subset = ref.subset_key
            if rule.timeout is not None:
                timeout = rule.timeout
            if rule.retry is not None:
                retry = rule.retry
        ex.logical = service
        ex.service = backend
        ex.head = self.render_head(ex)
        if retry is not None and retry.allows_method(ex.method) and not ex.upgrade:
            ex.retry = retry
            if ex.body_size <= retry.max_body_bytes:
                ex.replay = list(ex.body) if ex.body else []
                ex.replay_size = ex.body_size
        if retry is not None:  # every request under a retry policy counts toward the budget
            service.policy.budget.record_request(time.monotonic())
        if timeout is not None:
            ex.timer = asyncio.get_running_loop().call_later(timeout, self._timed_out, ex)
        if rule is not None and rule.filters.mirror is not None:
            self._maybe_mirror(ex, rule)
        self.send_to(ex)

    def _after_fault_delay(self, ex: Exchange, service: OutboundService) -> None:
        if self.wants(ex):
            rule = ex.rule
            if rule.filters.edits_request:
                ex.headers = rule.filters.request_headers(ex.header_list())
            ex.path = rule.filters.rewrite_path(ex.path, rule)
            self.route(ex, service, delayed=True)

    def _redirect(self, ex: Exchange, rule: HttpRule) -> None:
        response = rule.filters.redirect_response(
            b"http", ex.target, ex.path, request_id=ex.request_id
        )
        assert response is not None
        ex.status = int(response[9:12])
        ex.response_started = True
        if not ex.body_done:
            ex.keep_alive = False
        self.write(response)
        self.response_complete(ex)

    # === balance (concrete) and endpoint ===

    def send_to(self, ex: Exchange, avoid: EndpointState | None = None) -> None:
        """Pick an endpoint of ``ex.service`` and start the request there (or queue it while
        the service's connection limit is reached)."""
        service = ex.service
        assert service is not None
        endpoint = service.pick(ex.subset, self._hash_key(ex, service))
        if avoid is not None and endpoint is avoid and len(service.balancer.endpoints) > 1:
            endpoint = service.pick(ex.subset) or endpoint  # prefer another endpoint on retry
        ex.stats = service.stats
        if endpoint is None:
            self.respond_error(
                ex, 503, "no-healthy-endpoints", f"{service.key} has no healthy endpoints"
            )
            return
        key = endpoint.pool_key
        upstream = self.proxy.outbound_pool.take(key)
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
        account.open += 1
        endpoint.pending += 1
        ex.endpoint = endpoint
        spawn(self._connect(ex, service, endpoint), name=f"connect {service.key}")

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

    @staticmethod
    def _hash_key(ex: Exchange, service: OutboundService) -> bytes | None:
        policy = service.policy
        if policy.lb_type != "ConsistentHash":
            return None
        if policy.hash_header is not None:
            for name, value in ex.header_list():
                if name.lower() == policy.hash_header:
                    return value
        if policy.hash_cookie is not None:
            prefix = policy.hash_cookie + b"="
            for name, value in ex.header_list():
                if name.lower() == b"cookie":
                    for part in value.split(b";"):
                        part = part.strip()
                        if part.startswith(prefix):
                            return part[len(prefix) :]
        return None

    async def _connect(
        self, ex: Exchange, service: OutboundService, endpoint: EndpointState, attempt: int = 0
    ) -> None:
        key = endpoint.pool_key
        try:
            upstream = await self.proxy.outbound_pool.connect(
                key, sni=service.sni, identity=service.identity
            )
        except ProxyError as exc:
            endpoint.penalise(time.monotonic_ns())
            endpoint.pending -= 1
            if ex.endpoint is endpoint:
                ex.endpoint = None
            service.record_outcome(endpoint, "connect-failure")
            service.account.connection_closed()
            if not self.wants(ex):
                return
            # Nothing was sent: another endpoint can take the request safely.
            if (
                exc.cause == "connect-failed"
                and attempt < MAX_CONNECT_ATTEMPTS - 1
                and len(service.balancer.endpoints) > 1
            ):
                self._send_again(ex, endpoint, attempt + 1)
                return
            if exc.cause == "connect-failed" and self._may_retry(ex, cause=exc.cause):
                self._schedule_retry(ex)
                return
            self.respond_error(ex, exc.status, exc.cause, exc.detail)
            return
        upstream.account = service.account
        upstream.endpoint = endpoint
        if not self.wants(ex):
            endpoint.pending -= 1
            if not service.account.hand_over(upstream):
                self.proxy.outbound_pool.release(upstream)
            return
        self.start_try(ex, upstream)
        self._resume_buffered()

    def _send_again(self, ex: Exchange, avoid: EndpointState, attempt: int) -> None:
        service = ex.service
        assert service is not None
        endpoint = service.pick(ex.subset)
        if endpoint is avoid:
            endpoint = service.pick(ex.subset)
        if endpoint is None:
            self.respond_error(ex, 503, "no-healthy-endpoints", f"{service.key}")
            return
        service.account.open += 1
        endpoint.pending += 1
        ex.endpoint = endpoint
        spawn(self._connect(ex, service, endpoint, attempt), name=f"connect {service.key}")

    # === outcomes, retries and timeouts ===

    def on_response_status(self, ex: Exchange, status: int) -> bool:
        if ex.try_timer is not None:
            ex.try_timer.cancel()
            ex.try_timer = None
        service = ex.service
        endpoint = ex.endpoint
        if service is not None and endpoint is not None and service.policy.outlier is not None:
            service.record_outcome(endpoint, classify(status))
        return ex.retry is not None and self._may_retry(ex, status=status)

    def retry_dropped(self, ex: Exchange) -> None:
        self._schedule_retry(ex)

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
        if self._may_retry(ex, cause=cause):
            self._schedule_retry(ex)
            return
        if endpoint is not None:
            endpoint.penalise(time.monotonic_ns())
        status = 504 if cause == "upstream-timeout" else 502
        self.respond_error(ex, status, cause, detail)

    def _may_retry(self, ex: Exchange, *, status: int = 0, cause: str = "") -> bool:
        retry = ex.retry
        if retry is None or ex.tries >= retry.max_tries or ex.response_started:
            return False
        if ex.has_body and (ex.replay is None or not ex.body_done):
            return False
        if status and not retry.retriable_status(status):
            return False
        if cause and not retry.retriable_cause(cause):
            return False
        logical = ex.logical or ex.service
        assert logical is not None
        return logical.policy.budget.try_retry(time.monotonic())

    def _schedule_retry(self, ex: Exchange) -> None:
        retry = ex.retry
        assert retry is not None
        avoid = ex.endpoint
        self._release_endpoint(ex)
        delay = retry.backoff(ex.tries - 1, _rng)
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

    def _resume_buffered(self) -> None:
        self._resume(PAUSE_BUFFER)

    # === mirroring ===

    def _maybe_mirror(self, ex: Exchange, rule: HttpRule) -> None:
        mirror = rule.filters.mirror
        if mirror is None or not mirror.should_mirror(_rng):
            return
        if ex.has_body and (not ex.body_done or ex.body_size > MAX_MIRROR_BODY):
            self.proxy.metrics.error("outbound", "mirror-skipped-body")
            return
        table = self.proxy.table
        target = table.services.get(mirror.service_key) if table is not None else None
        if target is None:
            self.proxy.metrics.error("outbound", "mirror-unknown-service")
            return
        copy = Exchange(time.monotonic_ns())
        copy.method = ex.method
        copy.path = ex.path
        copy.headers = ex.headers
        copy.plain = ex.plain
        copy.te = ex.te
        copy.chunked = ex.chunked
        copy.is_head = ex.is_head
        copy.has_body = ex.has_body
        copy.body_done = True
        copy.body = list(ex.body) if ex.body else None
        copy.head = ex.head
        copy.service = target
        copy.subset = mirror.backend.subset_key
        MirrorSink(self.proxy).send(copy)


class MirrorSink(OutboundConnection):
    """Sends a copy of a request and throws the response away: fire and forget, so the
    caller's response and latency do not depend on the mirror."""

    def __init__(self, proxy: object) -> None:
        super().__init__(proxy)  # type: ignore[arg-type]
        self.closed = False

    def send(self, ex: Exchange) -> None:
        self.queue.append(ex)
        self.send_to(ex)

    def write(self, data: bytes) -> None:
        pass

    def response_complete(self, ex: Exchange) -> None:
        stats = ex.stats
        if stats is not None:
            stats.record(ex.status, time.monotonic_ns() - ex.start_ns)
        if ex.endpoint is not None:
            ex.endpoint.pending -= 1
            ex.endpoint = None
        self.queue.clear()
        self.closed = True

    def respond_error(
        self,
        ex: Exchange,
        status: int,
        cause: str,
        detail: str = "",
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.proxy.metrics.error("mirror", cause)
        ex.status = status
        self.response_complete(ex)

    def abort_response(self, ex: Exchange, cause: str) -> None:
        self.proxy.metrics.error("mirror", cause)
        self.response_complete(ex)

    def close(self) -> None:
        self.closed = True

    def _pause(self, reason: int) -> None:
        pass

    def _resume(self, reason: int) -> None:
        pass
