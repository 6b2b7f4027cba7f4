"""Traffic management of one outbound HTTP/2 stream (h2c from the app, gRPC included): the
counterpart of ``proxy/http1/outbound.py``'s route stage for HTTP/1.1 (docs/internals.md §8).

``route(down, stream, service)`` runs for a stream whose service has HTTP routes, a timeout,
a retry policy or connection limits (``needs_plan``); any other stream goes straight to the
balancer and carries no plan. It matches the service's ``HttpRouter`` on ``(:method, :path,
headers)`` and then, as for HTTP/1.1:

- redirect: answered with ``:status`` and ``location``; fault abort: a proxy error with the
  configured status (``x-gossamer-error: fault-injected``; a gRPC caller gets the
  ``grpc-status`` the spec maps that status to); fault delay: the stream waits, then goes on;
- request header edits (connection-specific fields HTTP/2 forbids are dropped after them),
  ``:path`` rewrite, response header edits when the response is forwarded;
- a weighted backend: a service, or the subset of its endpoints whose labels match;
- mirror: a copy of the request to another backend, fire and forget, response discarded.
  Only small unary-looking calls are copied: the whole request must arrive (64 KiB at most)
  before the primary response starts; larger or streaming requests are skipped
  (``mirror-skipped-body`` / ``mirror-skipped-streaming`` in the error counters);
- timeout (the rule's, else the service policy's): the whole stream, retries included, from
  the end of any fault delay. Before the response is forwarded the caller gets 504 with
  ``x-gossamer-error: upstream-timeout`` (gRPC: a trailers-only ``DEADLINE_EXCEEDED``);
  after, a gRPC response ends with ``DEADLINE_EXCEEDED`` trailers and any other is reset
  (CANCEL). The upstream stream is reset (CANCEL) either way;
- connection limits: see ``limits``.

Retries (the rule's ``RetryPolicy``, else the service policy's):

- Which streams: methods the policy allows; gRPC calls (always POST) whatever their method,
  because gRPC names what is safe to retry by status code, as gRPC's own retry policy does.
- Conditions: the response ``:status``; the ``grpc-status`` of a trailers-only response (or
  any ``grpc-status`` in the response headers); a failure before the response is forwarded:
  ``connect-failed``, ``upstream-reset`` (RST_STREAM of any code, the connection lost) and
  ``upstream-timeout`` (the per-try timeout, which runs from sending until the response is
  forwarded).
- Nothing is retried once response bytes have gone to the caller. To keep the decision open,
  the response head of a gRPC call that could be retried on a gRPC status is held until its
  first DATA (then forwarded at once, no retry) or its trailers (a status in ``on`` → retry;
  otherwise head and trailers go out together).
- The request must have fully arrived and its body (copied as it streams through) must fit
  ``max_body_bytes``; larger bodies are forwarded but not retried.
- Each retry is withdrawn from the retry budget of the service the caller named (first tries
  are recorded there), waits the policy's backoff (full jitter), and avoids the endpoint that
  failed when the backend has another.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

from gossamer.proxy.h2.headers import (
    GRPC_DEADLINE_EXCEEDED,
    Header,
    grpc_status_of,
    http_status_for_grpc,
    pseudo_fields,
    replace_path,
    strip_connection_fields,
)
from gossamer.proxy.h2.limits import OVERFLOW, QUEUED
from gossamer.proxy.h2.mirror import start_mirror
from gossamer.proxy.resilience.limits import UNLIMITED
from gossamer.proxy.resilience.outlier import classify

if TYPE_CHECKING:
    from gossamer.proxy.h2.downstream import H2Outbound
    from gossamer.proxy.h2.limits import StreamAccount
    from gossamer.proxy.h2.stream import ProxiedStream
    from gossamer.proxy.h2.upstream import H2Upstream
    from gossamer.proxy.pipeline.balancer import EndpointState
    from gossamer.proxy.resilience.retry import RetryPolicy
    from gossamer.proxy.snapshot.http_rules import HttpRule, MirrorPolicy
    from gossamer.proxy.snapshot.table import OutboundService

__all__ = ["MAX_MIRROR_BODY", "StreamPlan", "needs_plan", "route"]

MAX_MIRROR_BODY = 64 * 1024
_rng = random.Random()


def needs_plan(service: OutboundService) -> bool:
    """Whether streams to ``service`` need the route stage (else: straight to the balancer)."""
    policy = service.policy
    limits = policy.limits
    return (
        service.router is not None
        or policy.retry is not None
        or policy.timeout is not None
        or (limits is not UNLIMITED and not limits.unlimited)
    )


class StreamPlan:
    """What the route decided for one stream, and the state its retries and timers need."""

    __slots__ = (
        "account",
        "credited",
        "held",
        "keep",
        "keep_limit",
        "kept",
        "logical",
        "mirror",
        "queued",
        "received",
        "retries",
        "retry",
        "retry_handle",
        "rule",
        "subset",
        "timer",
        "try_sent",
        "try_timer",
    )

    def __init__(self, logical: OutboundService) -> None:
        self.logical = logical  # the service the caller named: its retry budget pays
        self.rule: HttpRule | None = None
        self.retry: RetryPolicy | None = None
        self.subset: tuple[tuple[str, str], ...] = ()
        self.retries = 0  # retries started so far
        self.timer: asyncio.TimerHandle | None = None  # the whole stream's deadline
        self.try_timer: asyncio.TimerHandle | None = None  # this try's deadline
        self.retry_handle: asyncio.TimerHandle | None = None  # a retry waiting out its backoff
        self.keep: list[bytes] | None = None  # request body copy (replay, mirror)
        self.kept = 0
        self.keep_limit = 0
        self.received = 0  # request body bytes received from the client
        self.credited = 0  # of those, credited back to the client (the watermark)
        self.try_sent = 0  # request body bytes this try has sent upstream
        self.held: list[Header] | None = None  # response head held while a retry may follow
        self.mirror: MirrorPolicy | None = None  # a copy to send once the request is whole
        self.account: StreamAccount | None = None  # the backend's stream slots, when limited
        self.queued = False  # waiting in ``account`` for a slot

    # === request body: the copy and the credit watermark ===

    def keep_chunk(self, stream: ProxiedStream, data: bytes) -> None:
        keep = self.keep
        assert keep is not None
        self.kept += len(data)
        if self.kept <= self.keep_limit:
            keep.append(data)
            return
        self.keep = None  # too large to replay or mirror
        if self.mirror is not None:
            self.mirror = None
            stream.down.proxy.metrics.error("mirror", "mirror-skipped-body")

    def credit_to(self, stream: ProxiedStream, mark: int) -> None:
        """Credit the client up to ``mark`` bytes of request body (never twice)."""
        extra = mark - self.credited
        if extra > 0:
            self.credited = mark
            stream.credit_down(extra)

    # === mirroring ===

    def fire_mirror(self, stream: ProxiedStream) -> None:
        mirror = self.mirror
        self.mirror = None
        if mirror is None:
            return
        metrics = stream.down.proxy.metrics
        if self.keep is None or self.kept > MAX_MIRROR_BODY:
            metrics.error("mirror", "mirror-skipped-body")
            return
        if stream.resp_started:
            metrics.error("mirror", "mirror-skipped-streaming")
            return
        start_mirror(stream, mirror, b"".join(self.keep), self.rule)
        if stream.resp_started or self.retry is None:
            self.keep = None

    # === upstream tries ===

    def attached(self, stream: ProxiedStream, up: H2Upstream) -> None:
        """A try has started on ``up``."""
        self.try_sent = 0
        retry = self.retry
        if retry is not None and retry.per_try_timeout is not None:
            if self.try_timer is not None:
                self.try_timer.cancel()
            self.try_timer = asyncio.get_running_loop().call_later(
                retry.per_try_timeout, self._try_timed_out, stream, up, stream.up_id
            )
        service = stream.service
        if service is not None:
            quota = service.policy.limits.max_requests_per_connection
            if quota:
                up.served += 1
                if up.served >= quota:
                    up.close()  # no new streams on it; those in flight finish

    def response(
        self, stream: ProxiedStream, headers: list[Header], status: int, end: bool
    ) -> None:
        """The response head of the current try: retry, hold it, or forward it."""
        grpc = stream.grpc
        code = grpc_status_of(headers) if grpc else None
        retry = self.retry
        if retry is not None:
            if retry.retriable_status(status, code) and self.may_retry(stream):
                self._outcome(stream, status, code)
                self.retry_later(stream)
                return
            if (
                grpc
                and code is None
                and not end
                and retry.grpc_statuses
                and self.retries < retry.attempts
                and stream.req_ended
                and self.keep is not None
            ):
                self.held = headers  # the gRPC status decides: wait for DATA or trailers
                return
        if not grpc or end:
            self._outcome(stream, status, code)
        stream.commit(headers, end)

    def held_trailers(self, stream: ProxiedStream, trailers: list[Header]) -> None:
        """Trailers right after a held head (no DATA): a retriable status is retried."""
        headers = self.held
        assert headers is not None
        self.held = None
        code = grpc_status_of(trailers)
        retry = self.retry
        if (
            retry is not None
            and code is not None
            and retry.retriable_status(stream.status, code)
            and self.may_retry(stream)
        ):
            self._outcome(stream, stream.status, code)
            self.retry_later(stream)
            return
        stream.commit(headers, False)
        stream.forward_trailers(trailers)

    def release_held(self, stream: ProxiedStream) -> None:
        """Response DATA after a held head: no retry now, forward the head."""
        headers = self.held
        assert headers is not None
        self.held = None
        stream.commit(headers, False)

    def committing(self, stream: ProxiedStream, headers: list[Header]) -> list[Header]:
        """The response is being forwarded: stop the try's clock, apply response edits."""
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        self.held = None
        if self.mirror is None:
            self.keep = None  # no retry can follow: stop copying the body
        rule = self.rule
        return headers if rule is None else rule.filters.response_headers(headers)

    def _outcome(self, stream: ProxiedStream, status: int, code: int | None) -> None:
        service = stream.service
        if service is not None and service.policy.outlier is not None:
            stream.record_outcome(status if code is None else http_status_for_grpc(code))

    def failed(self, stream: ProxiedStream, cause: str, avoid: EndpointState | None = None) -> bool:
        """A try failed without a response forwarded; True when a retry was started."""
        self.held = None
        retry = self.retry
        if retry is None or not retry.retriable_cause(cause) or not self.may_retry(stream):
            return False
        self.retry_later(stream, avoid)
        return True

    def may_retry(self, stream: ProxiedStream) -> bool:
        """Whether another try is allowed now (withdraws it from the budget when it is)."""
        retry = self.retry
        if (
            retry is None
            or self.retries >= retry.attempts
            or stream.resp_started
            or stream.done
            or not stream.down_open
            or not stream.req_ended
            or self.keep is None
            or self.kept > retry.max_body_bytes
        ):
            return False
        return self.logical.policy.budget.try_retry(time.monotonic())

    def retry_later(self, stream: ProxiedStream, avoid: EndpointState | None = None) -> None:
        """Leave the current try and start another after the backoff."""
        retry = self.retry
        assert retry is not None
        stream.detach()
        self.held = None
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if avoid is None:
            avoid = stream.endpoint
        stream.release()
        delay = retry.backoff(self.retries, _rng)
        self.retries += 1
        self.retry_handle = asyncio.get_running_loop().call_later(
            delay, self._retry_now, stream, avoid
        )

    def _retry_now(self, stream: ProxiedStream, avoid: EndpointState | None) -> None:
        self.retry_handle = None
        if stream.wanted():
            stream.down.reroute(stream, avoid)

    # === deadlines ===

    def _try_timed_out(self, stream: ProxiedStream, up: H2Upstream, up_id: int) -> None:
        self.try_timer = None
        if stream.done or stream.resp_started or stream.up is not up or stream.up_id != up_id:
            return
        service = stream.service
        endpoint = stream.endpoint
        if service is not None and endpoint is not None:
            service.record_outcome(endpoint, classify(None, "upstream-timeout"))
        if not self.failed(stream, "upstream-timeout"):
            stream.respond_error(504, "upstream-timeout", "per-try timeout")

    def timed_out(self, stream: ProxiedStream) -> None:
        self.timer = None
        if stream.done or stream.resp_ended:
            return
        if stream.resp_started:
            stream.cut("upstream-timeout", 504, GRPC_DEADLINE_EXCEEDED)
        else:
            stream.respond_error(504, "upstream-timeout", "the request timeout passed")

    # === the end ===

    def finish(self, stream: ProxiedStream) -> None:
        """The stream is done: stop the clocks, free the body copy and the stream slot."""
        for handle in (self.timer, self.try_timer, self.retry_handle):
            if handle is not None:
                handle.cancel()
        self.timer = self.try_timer = self.retry_handle = None
        self.held = None
        self.keep = None
        self.mirror = None
        self.credit_to(stream, self.received)
        account = self.account
        if account is not None:
            self.account = None
            account.leave(stream, self.queued)
            self.queued = False


# --------------------------------------------------------------------------- the route stage


def route(down: H2Outbound, stream: ProxiedStream, service: OutboundService) -> None:
    """Apply ``service``'s matching rule (or its defaults) to ``stream`` and send it on."""
    plan = StreamPlan(service)
    if stream.req_buf:
        plan.received = sum(len(chunk) for chunk in stream.req_buf)
    stream.plan = plan
    headers = stream.headers
    method, path, scheme = pseudo_fields(headers)
    policy = service.policy
    retry = policy.retry
    backend = service
    delay = 0.0
    keep_limit = 0
    rule = service.router.match(method, path, headers) if service.router is not None else None
    if rule is not None:
        plan.rule = rule
        filters = rule.filters
        redirect = filters.redirect
        if redirect is not None:
            location = redirect.location(scheme or b"http", stream.authority, path)
            stream.respond_redirect(redirect.status, location)
            return
        if filters.fault is not None:
            delay, abort = filters.fault.decide(_rng)
            if abort is not None:
                stream.respond_error(abort, "fault-injected", f"route {rule.name}")
                return
        ref = rule.pick_backend(_rng)
        table = down.proxy.table
        chosen = table.services.get(ref.service_key) if table is not None else None
        if chosen is None:
            stream.respond_error(
                503, "no-healthy-endpoints", f"backend {ref.service_key} is not known"
            )
            return
        backend = chosen
        plan.subset = ref.subset_key
        if rule.retry is not None:
            retry = rule.retry
        if filters.mirror is not None:
            keep_limit = MAX_MIRROR_BODY
        edited = filters.request_headers(headers)
        if edited is not headers:
            headers = strip_connection_fields(edited)
        if filters.rewrites:
            headers = replace_path(headers, filters.rewrite_path(path, rule))
        stream.headers = headers
    if retry is not None and (stream.grpc or retry.allows_method(method)):
        plan.retry = retry
        keep_limit = max(keep_limit, retry.max_body_bytes)
    if keep_limit:
        plan.keep_limit = keep_limit
        plan.keep = list(stream.req_buf) if stream.req_buf else []
        plan.kept = plan.received
        if plan.kept > keep_limit:
            plan.keep = None
    stream.service = backend
    if delay > 0:
        asyncio.get_running_loop().call_later(delay, _go, down, stream, backend)
    else:
        _go(down, stream, backend)


def _go(down: H2Outbound, stream: ProxiedStream, backend: OutboundService) -> None:
    """After any fault delay: start the clock, count the try, mirror, take a slot, send."""
    if not stream.wanted():
        return
    plan = stream.plan
    assert plan is not None
    rule = plan.rule
    logical = plan.logical
    timeout = logical.policy.timeout
    if rule is not None and rule.timeout is not None:
        timeout = rule.timeout
    if timeout is not None:
        plan.timer = asyncio.get_running_loop().call_later(timeout, plan.timed_out, stream)
    if plan.retry is not None:
        logical.policy.budget.record_request(time.monotonic())
    if rule is not None:
        mirror = rule.filters.mirror
        if mirror is not None and mirror.should_mirror(_rng):
            plan.mirror = mirror
            if stream.req_ended:
                plan.fire_mirror(stream)
    limits = backend.policy.limits
    if limits.max_connections:
        account = down.runtime.account(backend.key)
        verdict = account.admit(stream, limits)
        if verdict == OVERFLOW:
            stream.respond_error(
                503, "overflow", f"{backend.key}: stream and pending limits reached"
            )
            return
        plan.account = account
        if verdict == QUEUED:
            plan.queued = True
            return
    down.send_to(stream, backend, plan.subset)
