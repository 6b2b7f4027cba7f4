"""A span's attributes beyond the request's own (issue 14, item 1): the route rule that matched,
why the request failed (``error.type``), and outlier detection's ejections in the service the
request went to, on the real compiled snapshot of a service with two endpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.tracing import _exchange

from gossamer.proxy.observe.otlp import SpanRecord
from gossamer.proxy.observe.trace_context import Tracing
from gossamer.proxy.pipeline.tracing import TraceStage
from gossamer.proxy.process.settings import (
    ControlSettings,
    IdentitySettings,
    ListenSettings,
    ProxySettings,
    WorkloadSettings,
)
from gossamer.proxy.state import ProxyState

OUTLIER = {"consecutive_5xx": 2, "consecutive_gateway_errors": 0,
           "consecutive_connect_failures": 0, "interval_ms": 10000, "base_ejection_ms": 30000,
           "max_ejection_ms": 300000, "max_ejection_percent": 50.0}  # fmt: skip


class Exported:
    """Stands for the OTLP exporter: keeps what the stage records."""

    def __init__(self) -> None:
        self.spans: list[SpanRecord] = []

    def record(self, span: SpanRecord) -> None:
        self.spans.append(span)


def _state() -> ProxyState:
    settings = ProxySettings(workload=WorkloadSettings("frontend"), listen=ListenSettings(),
                             control=ControlSettings(),
                             identity=IdentitySettings(Path("/nonexistent")))  # fmt: skip
    state = ProxyState(settings)
    service: dict[str, Any] = {
        "name": "catalog", "namespace": "default",
        "identity": "spiffe://gossamer.local/ns/default/sa/catalog", "protocol": "http",
        "endpoints": [{"address": "127.0.0.1", "port": 1001, "labels": {}},
                      {"address": "127.0.0.1", "port": 1002, "labels": {}}],
        "http_routes": [{"name": "catalog/items",
                         "matches": [{"path": {"type": "Prefix", "value": "/items"}}]}],
        "policy": {"outlier": OUTLIER},
    }  # fmt: skip
    state.apply_snapshot(1, {"version": 1, "proxy": {"service": "frontend", "namespace": "default"},
                             "inbound": {"mtls": "STRICT"},
                             "outbound": {"services": [service], "unknown": []}})  # fmt: skip
    return state


def _span(direction: str, state: ProxyState | None, status: int, error: str = "",
          ejected: int = 0) -> dict[str, Any]:  # fmt: skip
    """The attributes of the span a sampled request gets, answered ``status``."""
    exported = Exported()
    stage = TraceStage(direction, Tracing(1.0), exported, "frontend")  # type: ignore[arg-type]
    ex = _exchange(b"\r\nHost: catalog")
    stage.on_request(ex)
    if state is not None:
        service = state.table.services["catalog.default"]
        ex.rule = service.router.rules[0]  # as the logical stage chose it
        ex.service = service
        ex.endpoint = service.endpoints_all[0]
        for _ in range(ejected):
            service.record_outcome(ex.endpoint, "error-5xx")
    ex.status, ex.error = status, error
    stage.on_complete(ex)
    (span,) = exported.spans
    return dict(span.attributes)


def test_a_client_span_names_its_route_and_the_ejections_in_its_service() -> None:
    state = _state()
    calm = _span("outbound", state, 200)
    assert calm["gossamer.route"] == "catalog/items"
    assert calm["peer.service"] == "catalog"
    assert "error.type" not in calm and "gossamer.outlier.ejected_endpoints" not in calm
    failing = _span("outbound", state, 503, ejected=2)  # its endpoint's 2nd 5xx ejects it
    assert failing["error.type"] == "503"
    assert failing["gossamer.outlier.ejected_endpoints"] == 1
    assert failing["gossamer.outlier.endpoint_ejected"] is True


def test_error_type_is_the_proxys_own_cause_else_an_error_status() -> None:
    assert _span("outbound", _state(), 502, "upstream-reset")["error.type"] == "upstream-reset"
    assert _span("outbound", _state(), 404)["error.type"] == "404"  # a client's error
    assert "error.type" not in _span("inbound", None, 404)  # not a server's
    assert _span("inbound", None, 500)["error.type"] == "500"
    assert "gossamer.route" not in _span("inbound", None, 200)
