"""One proxied HTTP/2 stream: a downstream stream relayed to an upstream stream, and back.

``ProxiedStream`` is the only per-request object of the HTTP/2 path (the counterpart of
``Exchange``). It owns the relay rules:

- request body bytes that arrive before the upstream stream exists are held (they are not yet
  credited, so the client's window bounds them); afterwards they go straight to the upstream
  session's queue for the stream;
- a DATA byte is credited back to the side it came from (``consume``: WINDOW_UPDATE) only when
  the other side's session has taken it for sending, in both directions;
- trailers pass both ways (``grpc-status`` is read from the response's), 1xx responses are
  dropped, RST_STREAM passes both ways (a client reset cancels the upstream stream; an
  upstream reset after the response started resets the client's stream with the same code);
- a stream refused by the upstream before anything of it was sent (GOAWAY race,
  REFUSED_STREAM) is started once more on another connection;
- errors the proxy generates are answered on the stream with ``x-gossamer-error`` (and
  ``grpc-status`` for gRPC calls); metrics are recorded once, when the stream is done;
- outlier detection hears one outcome per upstream try: the ``:status`` of a plain HTTP/2
  response, the ``grpc-status`` of a gRPC one (from a trailers-only response or the trailers,
  as the HTTP status it stands for), or the failure cause when there was no response.

Outbound streams that a route or traffic policy applies to carry a ``StreamPlan`` (``plan``;
None otherwise, and then none of the hooks below costs more than one attribute test). The
plan decides at the points the relay calls it: when response headers arrive (forward, hold
them, or retry), when an upstream try fails (retry or answer), when the stream finishes
(timers, the service's stream slot). For a stream with a plan every DATA byte is credited to
the client against one watermark (``StreamPlan.credited``), so a request body replayed on a
retry is never credited twice.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gossamer.protocol.h2.session import H2Error, Header, Outgoing
from gossamer.proxy.h2.headers import (
    GRPC_CANCELLED,
    GRPC_DEADLINE_EXCEEDED,
    error_body,
    error_headers,
    grpc_code_for_error,
    grpc_code_for_http,
    grpc_status_of,
    http_status_for_grpc,
    percent_encode,
    redirect_headers,
    replace_path,
    strip_connection_fields,
)
from gossamer.proxy.h2.plan import StreamPlan
from gossamer.proxy.pipeline.call import HTTP2, Call
from gossamer.proxy.pipeline.retries import (
    ERROR_HEADER,
    UNPROCESSED,
    may_reroute,
    may_resend_elsewhere,
    may_resend_to_app,
)
from gossamer.proxy.resilience.outlier import classify

if TYPE_CHECKING:
    from gossamer.proxy.h2.downstream import H2Downstream
    from gossamer.proxy.h2.upstream import H2Upstream
    from gossamer.proxy.snapshot.http_rules import MirrorPolicy

__all__ = ["CANCEL", "INTERNAL_ERROR", "ProxiedStream"]

NO_ERROR = 0
INTERNAL_ERROR = 2
REFUSED_STREAM = 7
CANCEL = 8
MAX_REFUSED_RETRIES = 1
_UNPROCESSED_STATUS = frozenset({502, 503})


def _status_of(headers: list[Header]) -> int:
    for name, value in headers:
        if name == b":status":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


class ProxiedStream(Call):
    __slots__ = (
        "attempts",
        "done",
        "down",
        "down_id",
        "down_open",
        "down_out",
        "grpc_status",
        "headers",
        "is_head",
        "moved",
        "moved_mark",
        "moved_since",
        "plan",
        "req_buf",
        "req_ended",
        "req_trailers",
        "resp_ended",
        "resp_started",
        "sent_ns",
        "up",
        "up_id",
        "up_open",
        "up_out",
    )

    def __init__(
        self,
        down: H2Downstream,
        down_id: int,
        headers: list[Header],
        *,
        authority: bytes,
        request_id: bytes,
        grpc: bool,
        is_head: bool,
        ended: bool,
    ) -> None:
        super().__init__(time.monotonic_ns())
        self.down = down
        self.down_id = down_id
        self.down_open = True
        self.down_out: Outgoing | None = None
        self.headers = headers  # as forwarded upstream
        self.authority = authority
        self.request_id = request_id
        self.grpc = grpc
        self.is_head = is_head
        self.req_buf: list[bytes] | None = None
        self.req_ended = ended
        self.req_trailers: list[Header] | None = None
        self.up: H2Upstream | None = None
        self.up_id = 0
        self.up_open = False
        self.up_out: Outgoing | None = None
        self.resp_started = False
        self.resp_ended = False
        self.grpc_status: int | None = None
        self.sent_ns = 0
        self.attempts = 0
        self.done = False
        self.plan: StreamPlan | None = None
        # Body bytes either way; the connection's sweep watches it move (``stalled``).
        self.moved = 0
        self.moved_mark = 0
        self.moved_since = self.start_ns

    # === the pipeline's Call ===

    @property
    def protocol(self) -> str:
        return HTTP2

    def header_list(self) -> list[Header]:
        return self.headers

    def set_header_list(self, headers: list[Header]) -> None:
        self.headers = strip_connection_fields(headers)  # edits may add what HTTP/2 forbids

    def set_path(self, path: bytes) -> None:
        self.path = path
        self.headers = replace_path(self.headers, path)

    def fail(
        self, status: int, cause: str, detail: str = "", extra: tuple[Header, ...] = ()
    ) -> None:
        self.respond_error(status, cause, detail, extra)

    def redirect(self, status: int, location: bytes) -> None:
        self.respond_redirect(status, location)

    def new_plan(self) -> StreamPlan:
        """The stream's plan, made on first use (streams nothing applies to carry none)."""
        plan = self.plan
        if plan is None:
            buffered = self.req_buf
            plan = self.plan = StreamPlan(sum(len(c) for c in buffered) if buffered else 0)
        return plan

    def keep_body(self, limit: int) -> None:
        self.new_plan().start_keeping(self, limit)

    def replayable(self, limit: int) -> bool:
        plan = self.plan
        return (
            plan is not None
            and not self.resp_started
            and not self.done
            and self.down_open
            and self.req_ended
            and plan.keep is not None
            and plan.kept <= limit
        )

    def mirror(self, policy: MirrorPolicy) -> None:
        self.new_plan().mirror = policy
        if self.req_ended:
            self.down.fire_mirror(self)

    def forward(self, timeout: float | None) -> None:
        self.down.forward(self, timeout)

    # === request direction (called by the downstream connection) ===

    def request_data(self, data: bytes) -> None:
        self.moved += len(data)
        self.request_bytes += len(data)
        plan = self.plan
        if plan is not None:
            plan.received += len(data)
            if plan.keep is not None:
                plan.keep_chunk(self, data)
        up = self.up
        if self.up_open and up is not None:
            if up.session.send_data(self.up_id, data):
                up.schedule_flush()
                return
        elif up is None and not self.done:
            if self.req_buf is None:
                self.req_buf = [data]
            else:
                self.req_buf.append(data)
            return
        self._give_back(len(data))  # nobody will take it: give the window back now

    def request_end(self, trailers: list[Header] | None = None) -> None:
        self.req_ended = True
        self.req_trailers = trailers
        up = self.up
        if self.up_open and up is not None and self.up_out is not None:
            up.session.end_stream(self.up_id, trailers)
            up.schedule_flush()
        plan = self.plan
        if plan is not None and plan.mirror is not None:
            self.down.fire_mirror(self)

    def wanted(self) -> bool:
        """Whether the stream still needs an upstream (the client is there, no answer yet)."""
        return not self.done and self.down_open

    def attach(self, up: H2Upstream) -> None:
        """Open the upstream stream on ``up`` and send what the client has sent so far."""
        if self.done or not self.down_open:
            self.release()
            return
        self.open_upstream(up)

    def open_upstream(self, up: H2Upstream) -> None:
        plan = self.plan
        if plan is not None and self.tries > 1 and plan.keep is not None:
            # A retry: the request body again, from the copy kept for it.
            self.req_buf = [b"".join(plan.keep)] if plan.kept else None
        has_body = not self.req_ended or bool(self.req_buf) or self.req_trailers is not None
        try:
            up_id, out = up.session.submit_request(self.headers, end_stream=not has_body)
        except H2Error as exc:
            self.respond_error(502, "upstream-reset", f"cannot open a stream: {exc}")
            return
        self.up = up
        self.up_id = up_id
        self.up_open = True
        up.streams[up_id] = self
        self.sent_ns = time.monotonic_ns()
        if out is not None:
            out.on_sent = self.credit_down if plan is None else self._credit_counted
            self.up_out = out
            buffered = self.req_buf
            self.req_buf = None
            if buffered:
                up.session.send_data(up_id, b"".join(buffered))
            if self.req_ended:
                up.session.end_stream(up_id, self.req_trailers)
        if plan is not None:
            plan.attached(self, up)
        up.schedule_flush()

    def detach(self, code: int = CANCEL) -> None:
        """Leave the current upstream try (a retry follows): reset it if it is still open;
        whatever it still sends is dropped by its connection (and credited there)."""
        up = self.up
        if up is not None and self.up_open:
            up.streams.pop(self.up_id, None)
            out = self.up_out
            if out is not None:
                out.on_sent = None
            up.session.reset(self.up_id, code)
            up.schedule_flush()
        self.up = None
        self.up_id = 0
        self.up_open = False
        self.up_out = None

    def downstream_closed(self, code: int, out: Outgoing | None) -> None:
        """The client's stream is gone: normally (after our END_STREAM) or by a reset."""
        self.down_open = False
        self._drop_outgoing(self.down_out, out)
        self.down_out = None
        if self.req_buf:
            self._give_back(sum(len(chunk) for chunk in self.req_buf))  # connection window
            self.req_buf = None
        up = self.up
        if out is not None and out.buf and up is not None:
            up.session.consume(self.up_id, len(out.buf))  # response bytes never delivered
            up.schedule_flush()
        if self.done:
            return
        if code == NO_ERROR and self.resp_ended:
            self.finish()  # the whole response went out; the upstream side closes on its own
            return
        if self.up_open and up is not None:
            up.session.reset(self.up_id, CANCEL)
            up.schedule_flush()
        if self.grpc and self.grpc_status is None:
            self.grpc_status = GRPC_CANCELLED
        self.finish()

    # === response direction (called by the upstream connection) ===

    def response_headers(self, headers: list[Header], end: bool) -> None:
        if self.resp_started:
            self.forward_trailers(headers)
            return
        plan = self.plan
        if plan is not None and plan.held is not None:
            plan.held_trailers(self, headers)  # trailers right after held headers
            return
        status = _status_of(headers)
        if status < 200:
            return  # interim (1xx) responses are not forwarded
        if status in _UNPROCESSED_STATUS:
            if self.down.direction == "inbound":  # the app may not claim no app saw it
                headers = [h for h in headers if h[0] != ERROR_HEADER]
            elif self._not_processed(headers):
                return  # taken to another endpoint
        self.status = status
        endpoint = self.endpoint
        if endpoint is not None:
            now = time.monotonic_ns()
            endpoint.observe(now - self.sent_ns, now)
        if plan is not None:
            plan.response(self, headers, status, end)
            return
        service = self.service
        if service is not None and service.policy.outlier is not None:
            if not self.grpc:
                self.record_outcome(status)
            elif end:
                self.record_grpc_outcome(headers)
        self.commit(headers, end)

    def commit(self, headers: list[Header], end: bool) -> None:
        """Forward the response head: from here on the response belongs to the client."""
        plan = self.plan
        if plan is not None:
            plan.committing(self)
        rule = self.rule
        if rule is not None:
            headers = rule.filters.response_headers(headers)
        stages = self.stages
        if stages is not None and stages.responses:
            headers = stages.response(self, self.status, headers)
        self.resp_started = True
        if end:
            self.resp_ended = True
            if self.grpc:
                self.grpc_status = grpc_status_of(headers)
        if not self.down_open:
            return
        down = self.down
        try:
            out = down.session.submit_response(self.down_id, headers, end_stream=end)
        except H2Error:
            self._reset_both(INTERNAL_ERROR)
            return
        if out is not None:
            out.on_sent = self._credit_up
            self.down_out = out
        down.schedule_flush()

    def forward_trailers(self, headers: list[Header]) -> None:
        self.resp_ended = True
        if self.grpc:
            self.grpc_status = grpc_status_of(headers)
            service = self.service
            if service is not None and service.policy.outlier is not None:
                self.record_grpc_outcome(headers)
        if self.down_open:
            self.down.session.end_stream(self.down_id, headers)
            self.down.schedule_flush()

    def response_data(self, data: bytes) -> None:
        self.moved += len(data)
        self.response_bytes += len(data)
        plan = self.plan
        if plan is not None and plan.held is not None:
            plan.release_held(self)
        down = self.down
        if self.down_open and down.session.send_data(self.down_id, data):
            down.schedule_flush()
        else:
            self._credit_up(len(data))

    def response_end(self) -> None:
        plan = self.plan
        if plan is not None and plan.held is not None:
            plan.release_held(self)
        self.resp_ended = True
        if self.down_open:
            self.down.session.end_stream(self.down_id)
            self.down.schedule_flush()

    def upstream_closed(self, code: int, out: Outgoing | None) -> None:
        """The upstream stream is gone: done (code 0), refused, reset, or its connection lost."""
        self.up_open = False
        self._drop_outgoing(self.up_out, out)
        self.up_out = None
        unsent = bytes(out.buf) if out is not None and out.buf else b""
        if self.resp_ended:
            # The whole response is in (a reset after it only stops the request body).
            if unsent:
                self._give_back(len(unsent))
            self.finish()
            return
        if (
            not self.resp_started
            and self.down_open
            and not self.done
            and self._sent_again(code, out, unsent)
        ):
            return
        if not self.resp_started:
            service = self.service
            if service is not None and self.endpoint is not None:
                service.record_outcome(self.endpoint, classify(None, "upstream-reset"))
            plan = self.plan
            if plan is not None and (
                plan.failed(self, "upstream-reset") or self._resent_elsewhere(plan)
            ):
                return  # retried, or sent again
            if unsent:
                self._give_back(len(unsent))
            self.respond_error(502, "upstream-reset", f"upstream reset the stream (code {code})")
            return
        if unsent:
            self._give_back(len(unsent))
        self.down.proxy.metrics.error(self.down.direction, "upstream-reset")
        if self.down_open:
            # Out with what is queued first: nghttp2 drops a stream's unsent HEADERS once it
            # is reset, and the client should see the response start before the reset.
            self.down.flush()
            self.down.session.reset(self.down_id, code or INTERNAL_ERROR)
            self.down.schedule_flush()
        self.finish()

    def _sent_again(self, code: int, out: Outgoing | None, unsent: bytes) -> bool:
        """The upstream stream is gone before any of the response: start it again when
        nothing of it reached the upstream (REFUSED_STREAM, a few times), or, inbound, when
        the app dropped a safe request (once: ``retries.may_resend_to_app``; an app that died
        is unreachable then, and the caller reroutes), or, outbound, when the destination
        dropped a safe request (another endpoint, once: ``retries.may_resend_elsewhere``).
        True when it was started again."""
        avoid = None
        has_body = self.request_bytes > 0 or not self.req_ended
        if code == REFUSED_STREAM and (out is None or out.sent == 0):
            if self.attempts >= MAX_REFUSED_RETRIES:
                return False
            self.attempts += 1
            if unsent:
                self.req_buf = [unsent, *self.req_buf] if self.req_buf else [unsent]
        elif self.down.direction == "inbound":
            if not may_resend_to_app(self, reused=False, has_body=has_body):
                return False
        else:  # the destination dropped it: another endpoint, once (retries.py)
            service, avoid = self.service, self.endpoint
            if service is None or avoid is None or has_body or self.plan is not None:
                return False  # (a plan's policy decides first: ``_resent_elsewhere``)
            if not may_resend_elsewhere(self, service, self.attempts + 1):
                return False
            self.attempts += 1
            avoid.penalise(time.monotonic_ns())
            service.record_outcome(avoid, classify(None, "upstream-reset"))
        self.up = None
        self.release()
        self.down.reroute(self, avoid)
        return True

    def _resent_elsewhere(self, plan: StreamPlan) -> bool:
        """A stream with a plan that its retry policy does not retry (or that has none): a
        safe request the destination dropped goes to another endpoint now, once, within the
        retry budget (``retries.may_resend_elsewhere``), as HTTP/1.1's does."""
        service, avoid = self.service, self.endpoint
        if service is None or avoid is None or self.request_bytes > 0 or not self.req_ended:
            return False
        if not may_resend_elsewhere(self, service, self.tries + self.attempts):
            return False
        avoid.penalise(time.monotonic_ns())
        plan.retry_later(self, avoid, delay=0.0)
        return True

    def _not_processed(self, headers: list[Header]) -> bool:
        """The destination's sidecar says no app saw the stream (``retries.UNPROCESSED``):
        eject that endpoint for a while and, when the stream can go again (no body sent, no
        plan, tries and the retry budget left), start it on another endpoint."""
        cause = next((v for n, v in headers if n == ERROR_HEADER), b"")
        service, endpoint = self.service, self.endpoint
        if cause not in UNPROCESSED or service is None or endpoint is None:
            return False
        resendable = self.plan is None and not self.moved and self.req_ended and self.down_open
        if not may_reroute(self, service, endpoint, self.attempts + 1, resendable):
            return False
        self.attempts += 1
        self.detach(CANCEL)
        self.release()
        self.down.reroute(self, endpoint)
        return True

    # === outcomes (outlier detection) ===

    def record_outcome(self, status: int) -> None:
        """Tell outlier detection how this try went, by HTTP status."""
        service = self.service
        endpoint = self.endpoint
        if service is not None and endpoint is not None:
            service.record_outcome(endpoint, classify(status))

    def record_grpc_outcome(self, headers: list[Header]) -> None:
        """Tell outlier detection how this gRPC try went, by its ``grpc-status``."""
        code = grpc_status_of(headers)
        self.record_outcome(http_status_for_grpc(code) if code is not None else 500)

    # === answers the proxy gives itself, errors and completion ===

    def respond_error(
        self, status: int, cause: str, detail: str = "", extra: tuple[Header, ...] = ()
    ) -> None:
        """Answer the client with a response the proxy generates (or reset, if too late)."""
        down = self.down
        down.proxy.metrics.error(down.direction, cause)
        if self.req_buf:
            self._give_back(sum(len(chunk) for chunk in self.req_buf))
            self.req_buf = None
        if self.resp_started:
            self._reset_both(INTERNAL_ERROR)
            return
        self.resp_started = True
        self.resp_ended = True
        self.status = status
        self.error = cause
        if self.grpc:
            self.grpc_status = grpc_code_for_error(status, cause)
        if self.down_open:
            headers = error_headers(
                status,
                cause,
                detail,
                request_id=self.request_id or None,
                grpc=self.grpc,
                extra=extra,
            )
            bodyless = self.grpc or self.is_head
            try:
                down.session.submit_response(self.down_id, headers, end_stream=bodyless)
                if not bodyless:
                    body = error_body(status, cause, detail)
                    self.response_bytes += len(body)
                    down.session.send_data(self.down_id, body)
                    down.session.end_stream(self.down_id)
            except H2Error:
                down.session.reset(self.down_id, INTERNAL_ERROR)
            down.schedule_flush()
        if self.up_open and self.up is not None:
            self.up.session.reset(self.up_id, CANCEL)
            self.up.schedule_flush()
        self.finish()

    def respond_redirect(self, status: int, location: bytes) -> None:
        """Answer with a redirect a route is configured to give (not an error)."""
        if self.req_buf:
            self._give_back(sum(len(chunk) for chunk in self.req_buf))
            self.req_buf = None
        self.resp_started = True
        self.resp_ended = True
        self.status = status
        if self.down_open:
            headers = redirect_headers(status, location, self.request_id or None)
            try:
                self.down.session.submit_response(self.down_id, headers, end_stream=True)
            except H2Error:
                self.down.session.reset(self.down_id, INTERNAL_ERROR)
            self.down.schedule_flush()
        self.finish()

    def cut(self, cause: str, status: int, grpc_code: int) -> None:
        """Stop a response already forwarded (a deadline passed): a gRPC call ends with
        trailers carrying ``grpc_code``, anything else is reset; the upstream is cancelled."""
        down = self.down
        down.proxy.metrics.error(down.direction, cause)
        if self.up_open and self.up is not None:
            self.up.session.reset(self.up_id, CANCEL)
            self.up.schedule_flush()
        self.status = status
        self.error = cause
        if self.down_open:
            if self.grpc and not self.resp_ended and self.down_out is not None:
                trailers = [(b"grpc-status", b"%d" % grpc_code),
                            (b"grpc-message", percent_encode(cause))]  # fmt: skip
                down.session.end_stream(self.down_id, trailers)
            else:
                down.session.reset(self.down_id, CANCEL)
            down.schedule_flush()
        self.resp_ended = True
        if self.grpc:
            self.grpc_status = grpc_code
        self.finish()

    def stalled(self, status: int, cause: str, detail: str) -> None:
        """No body bytes moved for too long (the connection's sweep decides): answer
        ``status`` if nothing was answered yet, else cut the stream."""
        if self.resp_started:
            self.cut(cause, status, GRPC_DEADLINE_EXCEEDED)
        else:
            self.respond_error(status, cause, detail)

    def reset_held(self) -> None:
        """Answered, but the client still holds its half of the stream open: reset it."""
        if self.down_open:
            self.down.session.reset(self.down_id, CANCEL)
            self.down.schedule_flush()

    def finish(self) -> None:
        """Record the stream once (HTTP status, gRPC status, latency) and free its endpoint."""
        if self.done:
            return
        self.done = True
        stats = self.stats
        if stats is not None:
            if self.status:
                stats.record(self.status, time.monotonic_ns() - self.start_ns)
            if self.grpc:
                code = self.grpc_status
                if code is None:
                    code = grpc_code_for_http(self.status) if self.status != 200 else 2
                self.down.grpc_stats.record(stats, code)
        if self.stages is not None:  # before the endpoint is let go: a span names it
            self.stages.complete(self)
        self.release()
        plan = self.plan
        if plan is not None:
            plan.finish(self)

    @staticmethod
    def _drop_outgoing(*queues: Outgoing | None) -> None:
        """A side of the stream is closed: its body queue calls back no more (that bound
        method was the only reference cycle a stream made, so streams are now freed at once
        instead of waiting for the cyclic garbage collector)."""
        for out in queues:
            if out is not None:
                out.on_sent = None

    def release(self) -> None:
        endpoint = self.endpoint
        if endpoint is not None:
            endpoint.pending -= 1
            self.endpoint = None

    def _reset_both(self, code: int) -> None:
        if self.down_open:
            self.down.session.reset(self.down_id, code)
            self.down.schedule_flush()
        if self.up_open and self.up is not None:
            self.up.session.reset(self.up_id, CANCEL)
            self.up.schedule_flush()
        if self.status < 500:
            self.status = 502
        self.finish()

    # === flow-control credit (called from inside the other session's send) ===

    def _give_back(self, n: int) -> None:
        """Credit request bytes nobody will send (with a plan: everything not yet credited)."""
        plan = self.plan
        if plan is None:
            self.credit_down(n)
        else:
            plan.credit_to(self, plan.received)

    def _credit_counted(self, n: int) -> None:
        plan = self.plan
        if plan is not None:
            plan.try_sent += n
            plan.credit_to(self, plan.try_sent)

    def credit_down(self, n: int) -> None:
        down = self.down
        down.session.consume(self.down_id, n)
        down.schedule_flush()

    def _credit_up(self, n: int) -> None:
        up = self.up
        if up is not None:
            up.session.consume(self.up_id, n)
            up.schedule_flush()
