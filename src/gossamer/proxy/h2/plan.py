"""HTTP/2's part of the endpoint stage for one outbound stream (h2c from the app, gRPC
included): the state a stream needs once the pipeline's logical stage (``pipeline.outbound``)
gave it a rule, a retry policy, a timeout, a mirror or connection limits. Streams to which
none of these applies carry no plan.

What only HTTP/2 has to decide lives here (docs/internals.md, "HTTP/2 and gRPC streams under
traffic policy"); whether to retry at all is ``pipeline.retries``'s decision, as for HTTP/1.1:

- the request body is copied as it streams through (``keep``, bounded by what the retry
  policy and a mirror need) and credited back to the client against one watermark, so a body
  replayed on a retry is never credited twice;
- the response head of a gRPC call that could be retried on a gRPC status is held until its
  first DATA (then forwarded at once, no retry) or its trailers (a status in ``on`` -> retry;
  otherwise head and trailers go out together); nothing is retried once response bytes went
  to the caller;
- the per-try timeout runs from sending until the response is forwarded; the whole stream's
  timeout answers 504 before the response (gRPC: a trailers-only ``DEADLINE_EXCEEDED``) and
  after it ends a gRPC response with ``DEADLINE_EXCEEDED`` trailers and resets any other;
- a mirror copy goes out once the whole request arrived, if the body fits and the response
  has not started (``mirror-skipped-body`` / ``mirror-skipped-streaming`` otherwise);
- ``connectionPool.maxConnections`` caps the backend's streams in flight (``limits``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gossamer.proxy.h2.headers import (
    GRPC_DEADLINE_EXCEEDED,
    Header,
    grpc_status_of,
    http_status_for_grpc,
)
from gossamer.proxy.pipeline import retries
from gossamer.proxy.resilience.outlier import classify

if TYPE_CHECKING:
    from gossamer.proxy.h2.limits import StreamAccount
    from gossamer.proxy.h2.stream import ProxiedStream
    from gossamer.proxy.h2.upstream import H2Upstream
    from gossamer.proxy.pipeline.balancer import EndpointState
    from gossamer.proxy.snapshot.http_rules import MirrorPolicy

__all__ = ["StreamPlan"]


class StreamPlan:
    """The state a stream's retries, timers, body copy and stream slot need."""

    __slots__ = (
        "account",
        "credited",
        "held",
        "keep",
        "keep_limit",
        "kept",
        "mirror",
        "queued",
        "received",
        "retry_handle",
        "timer",
        "try_sent",
        "try_timer",
    )

    def __init__(self, received: int) -> None:
        self.timer: asyncio.TimerHandle | None = None  # the whole stream's deadline
        self.try_timer: asyncio.TimerHandle | None = None  # this try's deadline
        self.retry_handle: asyncio.TimerHandle | None = None  # a retry waiting out its backoff
        self.keep: list[bytes] | None = None  # request body copy (replay, mirror)
        self.kept = 0
        self.keep_limit = 0
        self.received = received  # request body bytes received from the client
        self.credited = 0  # of those, credited back to the client (the watermark)
        self.try_sent = 0  # request body bytes this try has sent upstream
        self.held: list[Header] | None = None  # response head held while a retry may follow
        self.mirror: MirrorPolicy | None = None  # a copy to send once the request is whole
        self.account: StreamAccount | None = None  # the backend's stream slots, when limited
        self.queued = False  # waiting in ``account`` for a slot

    # === request body: the copy and the credit watermark ===

    def start_keeping(self, stream: ProxiedStream, limit: int) -> None:
        """Copy the request body from here on (what arrived so far is still in the stream's
        buffer, not yet sent), up to ``limit`` bytes."""
        self.keep_limit = limit
        self.keep = list(stream.req_buf) if stream.req_buf else []
        self.kept = self.received
        if self.kept > limit:
            self.keep = None

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

    # === upstream tries ===

    def attached(self, stream: ProxiedStream, up: H2Upstream) -> None:
        """A try has started on ``up``."""
        self.try_sent = 0
        retry = stream.retry
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
        retry = stream.retry
        if retry is not None:
            if retry.retriable_status(status, code) and retries.may_retry(
                stream, status=status, grpc_code=code
            ):
                self._outcome(stream, status, code)
                self.retry_later(stream)
                return
            if (
                grpc
                and code is None
                and not end
                and retry.grpc_statuses
                and stream.tries <= retry.attempts
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
        if code is not None and retries.may_retry(stream, status=stream.status, grpc_code=code):
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

    def committing(self, stream: ProxiedStream) -> None:
        """The response is being forwarded: stop the try's clock and the body copy."""
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        self.held = None
        if self.mirror is None:
            self.keep = None  # no retry can follow: stop copying the body

    def _outcome(self, stream: ProxiedStream, status: int, code: int | None) -> None:
        service = stream.service
        if service is not None and service.policy.outlier is not None:
            stream.record_outcome(status if code is None else http_status_for_grpc(code))

    def failed(self, stream: ProxiedStream, cause: str, avoid: EndpointState | None = None) -> bool:
        """A try failed without a response forwarded; True when a retry was started."""
        self.held = None
        if not retries.may_retry(stream, cause=cause):
            return False
        self.retry_later(stream, avoid)
        return True

    def retry_later(
        self, stream: ProxiedStream, avoid: EndpointState | None = None, delay: float = -1.0
    ) -> None:
        """Leave the current try and start another after ``delay`` seconds (the retry
        policy's backoff when negative)."""
        stream.detach()
        self.held = None
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if avoid is None:
            avoid = stream.endpoint
        stream.release()
        if delay < 0:
            delay = retries.backoff(stream)
        stream.tries += 1
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
