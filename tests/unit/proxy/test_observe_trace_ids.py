"""The trace id an audit record and an access-log line name is the one the request went on
with: the tracing stage's (``Call.trace_id``, sampled or not), else the caller's W3C one."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.tracing import _exchange

from gossamer.proxy.http1.exchange import Exchange
from gossamer.proxy.observe.access_log import AccessLog
from gossamer.proxy.observe.audit_spool import record_dict
from gossamer.proxy.observe.otlp import SpanExporter
from gossamer.proxy.observe.trace_context import Tracing
from gossamer.proxy.pipeline.access_log import AccessLogStage
from gossamer.proxy.pipeline.audit import record_row
from gossamer.proxy.pipeline.tracing import TraceStage
from gossamer.proxy.snapshot.authorization import Decision

TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = b"00f067aa0ba902b7"
DECISION = Decision(True, "default/readers", "", ("default/audit",))


def _went_on_with(ex: Exchange) -> bytes | None:
    """The trace id of the traceparent the request is sent on with (records and log lines
    hold it as bytes, written as its text: ``gossamer.json_lines``)."""
    sent = dict((name.lower(), value) for name, value in ex.header_list())
    traceparent = sent.get(b"traceparent")
    return traceparent[3:35] if traceparent is not None else None


def _recorded(ex: Exchange) -> bytes | None:
    return record_dict(record_row(ex, DECISION, ("default", "orders")))["trace_id"]  # type: ignore[no-any-return]


def _logged(tmp_path: Path, ex: Exchange) -> bytes | None:
    log = AccessLog("json", "", str(tmp_path / "access.log"))
    log._stop.set()
    log._writer.join()
    AccessLogStage(log, "inbound", "orders", "127.0.0.1:8081").on_complete(ex)
    (entry,) = log._queue
    log.close()
    return entry[15]


@pytest.mark.parametrize(
    ("ratio", "lines"),
    [
        (0.0, b""),  # a root, not sampled
        (1.0, b""),  # a root, sampled
        (0.0, b"\r\ntraceparent: 00-%s-%s-00" % (TRACE, SPAN)),  # the caller's, not sampled
        (0.0, b"\r\ntraceparent: 00-%s-%s-01" % (TRACE, SPAN)),  # the caller's, sampled
        (1.0, b"\r\nb3: a3ce929d0e0e4736-%s-1" % SPAN),  # B3, 64-bit
    ],
    ids=["root unsampled", "root sampled", "w3c unsampled", "w3c sampled", "b3 64-bit"],
)
def test_records_and_lines_name_the_trace_the_request_went_on_in(
    tmp_path: Path, ratio: float, lines: bytes
) -> None:
    exporter = SpanExporter("http://127.0.0.1:9", [("service.name", "orders")])
    ex = _exchange(b"\r\nHost: orders\r\nuser-agent: test" + lines)
    TraceStage("inbound", Tracing(ratio), exporter, "orders").on_request(ex)
    went_on = _went_on_with(ex)
    assert went_on is not None and len(went_on) == 32
    assert _recorded(ex) == went_on
    assert _logged(tmp_path, ex) == went_on


def test_without_a_tracing_stage_the_callers_w3c_trace_is_named(tmp_path: Path) -> None:
    ex = _exchange(b"\r\nHost: orders\r\ntraceparent: 00-%s-%s-01" % (TRACE, SPAN))
    assert _recorded(ex) == TRACE
    assert _logged(tmp_path, ex) == TRACE
    plain = _exchange(b"\r\nHost: orders")
    assert _recorded(plain) is None
    assert _logged(tmp_path, plain) is None
