"""Distributed tracing in the ``trace`` slot: one span per request and direction.

``TraceStage`` reads the context the request came with (``trace_context.read_context``:
W3C or B3), decides whether the trace is sampled (the parent's decision, else the ratio of the
mesh's ``tracing`` settings), gives this hop a span id and sends the request on naming that span
as the parent (``trace_context.propagate``). So the caller's sidecar records a CLIENT span
(outbound direction) whose child is the callee's SERVER span (inbound direction), whose child
is whatever the app records when it continues the trace.

A request that is not sampled costs the header read and, when it came without a context,
one added ``traceparent``; one whose caller sent a W3C context that is not sampled goes on with
that context untouched (nothing of this hop is recorded, so no span of it can be a parent). A
span is recorded when the request completes, only when sampled: a ``SpanRecord`` appended to
the exporter's bounded queue (``otlp.SpanExporter``), nothing else on the request path. Its name
is ``<METHOD> <service>`` (the destination for a CLIENT span, the workload for a SERVER span);
its attributes follow OpenTelemetry's HTTP conventions (``http.request.method``, ``url.path``,
``url.scheme``, ``server.address``, ``http.response.status_code``, ``network.protocol.version``,
``http.request.resend_count`` for retries, ``peer.service``, ``network.peer.address`` /
``network.peer.port`` of the endpoint chosen, ``error.type``: the proxy's own cause when it
answered or cut the request, else the status of an error) plus the mesh's own
(``gossamer.request_id``, ``gossamer.peer.identity``: the caller's SPIFFE ID on a SERVER span,
the destination's expected one on a CLIENT span; on a CLIENT span ``gossamer.route``, the
route rule that matched, and, when outlier detection has endpoints of the service ejected as
the request completes, ``gossamer.outlier.ejected_endpoints`` and, when the endpoint it went to
is one of them, ``gossamer.outlier.endpoint_ejected``). ``http.route`` is not set: it is the
app's path template, which the app's own span names when it continues the trace. A 5xx (or
4xx on a CLIENT span), or a caller gone before the answer, marks the span as an error.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gossamer.proxy.observe.otlp import CLIENT, SERVER, SpanExporter, SpanRecord, Value
from gossamer.proxy.observe.trace_context import (
    TraceContext,
    Tracing,
    new_root,
    new_span_id,
    new_trace_id,
    parse_traceparent,
    propagate,
    ratio_sampled,
    read_context,
    trace_headers,
)
from gossamer.proxy.pipeline.slots import Stage

if TYPE_CHECKING:
    from gossamer.proxy.pipeline.call import Call

__all__ = ["TRACE_NOTE", "TraceStage"]

TRACE_NOTE = "trace"  # Call.notes key: the span of this hop while the request runs


class _Span:
    """A sampled request's span while it runs."""

    __slots__ = ("parent", "span_id", "start_ns", "state", "trace_id")

    def __init__(
        self, trace_id: bytes, span_id: bytes, parent: TraceContext | None, state: bytes
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent = parent
        self.state = state
        self.start_ns = time.time_ns()


class TraceStage(Stage):
    """Propagates the trace context and records this hop's span (see the module docstring)."""

    slot = "trace"
    name = "tracing"
    sees_completions = True

    def __init__(
        self, direction: str, tracing: Tracing, exporter: SpanExporter, service: str
    ) -> None:
        self.kind = SERVER if direction == "inbound" else CLIENT
        self.tracing = tracing
        self.exporter = exporter
        self.service = service  # this workload (the SERVER span's name)

    def on_request(self, call: Call) -> bool:
        traceparent, b3 = call.trace_first_look()
        if not b3 and traceparent is None:
            return self._root(call)
        if not b3 and traceparent is not None:
            parent = parse_traceparent(traceparent)
            if parent is not None and not parent.sampled:
                call.trace_id = parent.trace_id
                return True  # not recorded: the caller's traceparent goes on as it came
        headers = call.header_list()
        parent, state = read_context(trace_headers(headers))
        if parent is None or not parent.trace_id:  # none valid, or a B3 decision alone
            trace_id = new_trace_id()
            decided = parent.sampled if parent is not None else None
        else:
            trace_id, decided = parent.trace_id, parent.sampled
        sampled = ratio_sampled(trace_id, self.tracing) if decided is None else decided
        span_id = new_span_id()
        call.set_header_list(propagate(headers, trace_id, span_id, sampled, parent, state))
        call.trace_id = trace_id
        if sampled:
            self._start(call, _Span(trace_id, span_id, parent, state))
        return True

    def _root(self, call: Call) -> bool:
        """A request with no trace header: a trace starts here, decided by the ratio."""
        trace_id, sampled = new_root(self.tracing)
        # Not sampled, this hop is never recorded: any non-zero parent id will do.
        span_id = new_span_id() if sampled else trace_id[16:]
        flags = b"-01" if sampled else b"-00"
        call.add_header(b"traceparent", b"".join((b"00-", trace_id, b"-", span_id, flags)))
        call.trace_id = trace_id
        if sampled:
            self._start(call, _Span(trace_id, span_id, None, b""))
        return True

    @staticmethod
    def _start(call: Call, span: _Span) -> None:
        notes = call.notes
        if notes is None:
            call.notes = notes = {}
        notes[TRACE_NOTE] = span

    def on_complete(self, call: Call) -> None:
        notes = call.notes
        span = notes.get(TRACE_NOTE) if notes is not None else None
        if not isinstance(span, _Span):  # not sampled: nothing to record
            return
        status = call.status
        client = self.kind == CLIENT
        service = call.service.name if client and call.service is not None else self.service
        method = call.method.decode("latin-1")
        parent = span.parent
        self.exporter.record(SpanRecord(
            span.trace_id, span.span_id, parent.parent_id if parent is not None else b"",
            span.state, f"{method} {service}", self.kind, span.start_ns, time.time_ns(),
            _attributes(call, method, client), status == 0 or status >= (400 if client else 500),
        ))  # fmt: skip


def _attributes(call: Call, method: str, client: bool) -> tuple[tuple[str, Value], ...]:
    path = call.path.partition(b"?")[0].decode("latin-1")
    found: list[tuple[str, Value]] = [
        ("http.request.method", method),
        ("url.path", path),
        ("url.scheme", call.scheme.decode("latin-1")),
        ("server.address", call.authority.decode("latin-1")),
        ("network.protocol.version", "2" if call.protocol == "HTTP/2" else "1.1"),
        ("gossamer.request_id", call.request_id.decode("latin-1")),
    ]
    if call.status:
        found.append(("http.response.status_code", call.status))
    if client:
        _client_attributes(call, found)
    elif call.peer:
        found.append(("gossamer.peer.identity", call.peer.decode("latin-1")))
    status = call.status
    if call.error:  # the proxy answered or cut the request itself: why
        found.append(("error.type", call.error))
    elif status >= (400 if client else 500):
        found.append(("error.type", str(status)))
    if call.grpc:
        found.append(("rpc.system", "grpc"))
    return tuple(found)


def _client_attributes(call: Call, found: list[tuple[str, Value]]) -> None:
    """A CLIENT span's own: the route rule, the destination, the endpoint, the retries, and
    outlier detection's ejections in that service when the request completed."""
    rule = call.rule
    if rule is not None:
        found.append(("gossamer.route", rule.name))
    service = call.service
    endpoint = call.endpoint
    if service is not None:
        found.append(("peer.service", service.name))
        if service.identity:
            found.append(("gossamer.peer.identity", service.identity))
        outlier = service.policy.outlier
        if outlier is not None:
            ejected = outlier.ejected(time.monotonic())
            if ejected:
                found.append(("gossamer.outlier.ejected_endpoints", len(ejected)))
                if endpoint is not None and endpoint.addr in ejected:
                    found.append(("gossamer.outlier.endpoint_ejected", True))
    if endpoint is not None:
        found += [("network.peer.address", endpoint.addr.host),
                  ("network.peer.port", endpoint.addr.port)]  # fmt: skip
    if call.tries > 1:
        found.append(("http.request.resend_count", call.tries - 1))
