"""Distributed tracing with real parts (issue 14, item 1): sidecar processes record a CLIENT
span (the caller's sidecar) and a SERVER span (the callee's), export them over OTLP/HTTP to a
collector that decodes them with the official ``opentelemetry-proto`` package, and an app
instrumented with the OpenTelemetry SDK continues the same trace as the SERVER span's child.
B3 callers are answered in B3, a caller's "not sampled" is followed, and the MeshConfig's
ratio decides for a trace that starts at a sidecar.
"""

from __future__ import annotations

import http.server
import json
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gossamer.control.ca import CertificateAuthority
from gossamer.identity.spiffe import SpiffeId
from tests.integration.control_helpers import ControlPlaneProcess, running_control_plane
from tests.process_harness import ROOT, Proc, Processes, free_port, wait_port, wait_ready
from tests.sidecar_harness import app_proxy_env

API = "gossamer.dev/v1alpha1"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@dataclass(frozen=True)
class Received:
    service: str  # the resource's service.name
    span: Any  # opentelemetry.proto Span


class Collector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP receiver: every span it is sent, with its resource's service name."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Receive)
        if tls is not None:  # an https collector: the handshake on accept
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.received: list[Received] = []
        self.api_keys: list[str | None] = []  # each export's x-api-key header
        self.lock = threading.Lock()

    def spans_of(self, trace_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.span.trace_id.hex() == trace_id]


class _Receive(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            self.server.api_keys.append(self.headers.get("x-api-key"))
            for resource_spans in request.resource_spans:
                names = [a.value.string_value for a in resource_spans.resource.attributes
                         if a.key == "service.name"]  # fmt: skip
                for scope in resource_spans.scope_spans:
                    self.server.received += [Received(names[0], s) for s in scope.spans]
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Mesh:
    cp: ControlPlaneProcess
    frontend: Proc
    orders: Proc
    collector: Collector
    secure: Collector  # https, its certificate from a CA the sidecars trust by SSL_CERT_FILE

    def grpc_meta(self, metadata: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
        """Call the greeter (gRPC, through a CONNECT tunnel as an unchanged app does): the
        metadata it saw."""
        with pytest.MonkeyPatch.context() as env:
            app_proxy_env(env, self.frontend.ports["outbound"])
            with grpc.insecure_channel("greeter:80") as channel:
                reply = channel.unary_unary("/test.Echo/Meta")(b"", metadata=metadata,
                                                                timeout=10)  # fmt: skip
        seen: dict[str, str] = json.loads(reply)["metadata"]
        return seen

    def tracing(
        self, percent: float, url: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        url = url or f"http://127.0.0.1:{self.collector.server_address[1]}"
        tracing = {"otlpEndpoint": url, "samplingPercent": percent, "flushInterval": "100ms",
                   "headers": headers or {}}  # fmt: skip
        doc = {"apiVersion": API, "kind": "MeshConfig", "metadata": {"name": "default"},
               "spec": {"tracing": tracing}}  # fmt: skip
        with self.cp.client() as api:
            assert api.post("/v1/resources", json=doc).status_code == 200

    def call(self, headers: dict[str, str] | None = None) -> dict[str, str]:
        """GET http://orders/items through the frontend's sidecar: the headers the app saw."""
        proxy = f"http://127.0.0.1:{self.frontend.ports['outbound']}"
        with httpx.Client(proxy=proxy, timeout=10, trust_env=False) as client:
            answer = client.get("http://orders/items", headers=headers or {})
        assert answer.status_code == 200, answer.text
        seen: dict[str, str] = answer.json()["headers"]
        return seen

    def spans(self, trace_id: str, count: int) -> list[Received]:
        deadline = time.monotonic() + 15
        while len(found := self.collector.spans_of(trace_id)) < count:
            assert time.monotonic() < deadline, f"{len(found)} of {count} spans: {found}"
            time.sleep(0.1)
        return found


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("tracing")
    collector = Collector()
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    ca = CertificateAuthority.ephemeral()
    cert, key = ca.issue_keypair(SpiffeId("gossamer.local", "default", "collector"),
                                 timedelta(hours=1), ["localhost"], ["127.0.0.1"])  # fmt: skip
    (tmp / "collector.crt").write_bytes(cert)
    (tmp / "collector.key").write_bytes(key)
    (tmp / "roots.pem").write_bytes(ca.root_pem)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp / "collector.crt", tmp / "collector.key")
    secure = Collector(tls)
    threading.Thread(target=secure.serve_forever, daemon=True).start()
    trusted = {"SSL_CERT_FILE": str(tmp / "roots.pem")}
    traces_url = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
    with running_control_plane(tmp / "cp") as cp:
        procs = Processes(tmp)
        try:
            with cp.client() as api:
                greeter = {"apiVersion": API, "kind": "Service", "metadata": {"name": "greeter"},
                           "spec": {"ports": [{"port": 80, "protocol": "grpc"}]}}  # fmt: skip
                assert api.post("/v1/resources", json=greeter).status_code == 200
                route = {"apiVersion": API, "kind": "HTTPRoute", "metadata": {"name": "orders"},
                         "spec": {"service": "orders", "rules": [{
                             "name": "items", "matches": [{"path": {"type": "Prefix",
                                                                    "value": "/items"}}],
                             "backends": [{"service": "orders"}]}]}}  # fmt: skip
                assert api.post("/v1/resources", json=route).status_code == 200
            greeter_port = free_port()
            procs.spawn("greeter-app", [sys.executable, str(ROOT / "tests/apps/grpc_echo.py"),
                                        str(greeter_port), "greeter-1"])  # fmt: skip
            wait_port(greeter_port)
            wait_ready(procs.sidecar(cp, "greeter-sidecar", "greeter", greeter_port))
            port = free_port()
            app = procs.spawn("orders-app", [sys.executable, str(ROOT / "tests/apps/traced_app.py"),
                                             str(port), "orders-app", traces_url])  # fmt: skip
            wait_port(port)
            assert app.proc.poll() is None
            orders = procs.sidecar(cp, "orders-sidecar", "orders", port, extra_env=trusted)
            frontend = procs.sidecar(cp, "frontend-sidecar", "frontend", None,
                                     extra_env=trusted)  # fmt: skip
            wait_ready(orders)
            wait_ready(frontend)
            running = Mesh(cp, frontend, orders, collector, secure)
            running.tracing(100.0)
            deadline = time.monotonic() + 20  # until both sidecars trace
            while "traceparent" not in running.call():
                assert time.monotonic() < deadline, "tracing never reached the sidecars"
                time.sleep(0.2)
            yield running
        finally:
            procs.stop_all()
            collector.shutdown()
            secure.shutdown()


def _by_kind(spans: list[Received]) -> dict[str, Received]:
    out = {}
    for received in spans:
        kind = "app" if received.service == "orders-app" else Span.SpanKind.Name(
            received.span.kind)  # fmt: skip
        out[kind] = received
    return out


def test_one_request_is_one_trace_across_both_sidecars_and_the_app(mesh: Mesh) -> None:
    seen = mesh.call()
    _, trace_id, server_span, flags = seen["traceparent"].split("-")
    assert flags == "01"
    spans = _by_kind(mesh.spans(trace_id, 3))
    client, server, app = spans["SPAN_KIND_CLIENT"], spans["SPAN_KIND_SERVER"], spans["app"]
    assert (client.service, server.service) == ("frontend", "orders")
    assert client.span.parent_span_id == b""  # the trace started at the caller's sidecar
    assert server.span.parent_span_id == client.span.span_id
    assert server.span.span_id.hex() == server_span  # the app's parent is the SERVER span
    assert app.span.parent_span_id == server.span.span_id
    assert client.span.name == "GET orders" and server.span.name == "GET orders"
    attributes = {a.key: a.value for a in client.span.attributes}
    assert attributes["http.request.method"].string_value == "GET"
    assert attributes["url.path"].string_value == "/items"
    assert attributes["http.response.status_code"].int_value == 200
    assert attributes["peer.service"].string_value == "orders"
    assert attributes["network.peer.port"].int_value == mesh.orders.ports["inbound"]
    assert attributes["gossamer.peer.identity"].string_value.endswith("/sa/orders")
    assert attributes["gossamer.route"].string_value == "orders/items"  # the HTTPRoute's rule
    assert "error.type" not in attributes and "gossamer.outlier.ejected_endpoints" not in attributes
    inbound = {a.key: a.value for a in server.span.attributes}
    assert inbound["gossamer.peer.identity"].string_value.endswith("/sa/frontend")
    assert inbound["gossamer.request_id"].string_value == seen["x-request-id"]
    assert client.span.start_time_unix_nano <= server.span.start_time_unix_nano
    assert server.span.end_time_unix_nano <= client.span.end_time_unix_nano


def test_an_instrumented_callers_trace_is_continued(mesh: Mesh) -> None:
    seen = mesh.call({"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01", "tracestate": "acme=1"})
    assert seen["traceparent"].split("-")[1] == TRACE and seen["tracestate"] == "acme=1"
    spans = _by_kind(mesh.spans(TRACE, 3))
    assert spans["SPAN_KIND_CLIENT"].span.parent_span_id.hex() == CALLER_SPAN
    assert spans["SPAN_KIND_CLIENT"].span.trace_state == "acme=1"


def test_b3_callers_get_b3_and_w3c_on(mesh: Mesh) -> None:
    trace_id = "a3ce929d0e0e4736"  # 64-bit, as older Zipkin clients send
    seen = mesh.call({"b3": f"{trace_id}-{CALLER_SPAN}-1"})
    widened = "0" * 16 + trace_id
    b3_trace, b3_span, b3_sampled = seen["b3"].split("-")
    assert (b3_trace, b3_sampled) == (widened, "1")
    assert seen["traceparent"] == f"00-{widened}-{b3_span}-01"
    spans = _by_kind(mesh.spans(widened, 3))
    assert spans["SPAN_KIND_CLIENT"].span.parent_span_id.hex() == CALLER_SPAN


def test_a_callers_not_sampled_is_followed(mesh: Mesh) -> None:
    trace_id = "11112222333344445555666677778888"
    seen = mesh.call({"traceparent": f"00-{trace_id}-{CALLER_SPAN}-00"})
    assert seen["traceparent"].startswith(f"00-{trace_id}-") and seen["traceparent"].endswith(
        "-00")  # fmt: skip
    mesh.call()  # a sampled request after it: once its spans arrive, the first had its chance
    time.sleep(1.0)
    assert mesh.collector.spans_of(trace_id) == []


def test_at_zero_percent_traces_that_start_here_are_not_recorded(mesh: Mesh) -> None:
    mesh.tracing(0.0)
    try:
        deadline = time.monotonic() + 20
        while True:
            seen = mesh.call()
            if seen["traceparent"].endswith("-00"):
                break
            assert time.monotonic() < deadline, "0% never reached the sidecars"
            time.sleep(0.2)
        trace_id = seen["traceparent"].split("-")[1]
        time.sleep(1.0)
        assert mesh.collector.spans_of(trace_id) == []
        metrics = httpx.get(f"http://127.0.0.1:{mesh.frontend.ports['admin']}/metrics").text
        counter = 'gossamer_trace_spans_total{outcome="exported"} '
        (exported,) = [line for line in metrics.splitlines() if line.startswith(counter)]
        assert int(exported.removeprefix(counter)) >= 3
    finally:
        mesh.tracing(100.0)


def test_a_services_sampling_takes_the_place_of_the_mesh_wide_one(mesh: Mesh) -> None:
    """The MeshConfig samples 0%, frontend's Service says 100%: the traces that start at
    frontend's sidecar are sampled and exported whole, orders' sidecar following them."""
    mesh.tracing(0.0)
    frontend = {"apiVersion": API, "kind": "Service", "metadata": {"name": "frontend"},
                "spec": {"tracing": {"samplingPercent": 100}}}  # fmt: skip
    try:
        with mesh.cp.client() as api:
            assert api.post("/v1/resources", json=frontend).status_code == 200
        deadline = time.monotonic() + 20
        while not (seen := mesh.call())["traceparent"].endswith("-01"):
            assert time.monotonic() < deadline, "frontend's 100% never reached its sidecar"
            time.sleep(0.2)
        spans = _by_kind(mesh.spans(seen["traceparent"].split("-")[1], 3))
        assert (spans["SPAN_KIND_CLIENT"].service, spans["SPAN_KIND_SERVER"].service) == (
            "frontend", "orders")  # fmt: skip
        frontend["spec"] = {}  # (deleting the Service would revoke its sidecar's certificate)
        with mesh.cp.client() as api:
            assert api.post("/v1/resources", json=frontend).status_code == 200
        deadline = time.monotonic() + 20
        while not mesh.call()["traceparent"].endswith("-00"):  # back to the mesh's 0%
            assert time.monotonic() < deadline, "the mesh's 0% never came back"
            time.sleep(0.2)
    finally:
        frontend["spec"] = {}
        with mesh.cp.client() as api:
            api.post("/v1/resources", json=frontend)
        mesh.tracing(100.0)


def test_grpc_calls_are_traced_too(mesh: Mesh) -> None:
    """A gRPC call (HTTP/2 through a CONNECT tunnel) gets the same two spans, marked as gRPC,
    and the app sees the context in its metadata."""
    seen = mesh.grpc_meta((("traceparent", f"00-{TRACE[:-4]}abcd-{CALLER_SPAN}-01"),))
    trace_id = TRACE[:-4] + "abcd"
    _, sent_trace, server_span, flags = seen["traceparent"].split("-")
    assert (sent_trace, flags) == (trace_id, "01")
    spans = _by_kind(mesh.spans(trace_id, 2))
    client, server = spans["SPAN_KIND_CLIENT"], spans["SPAN_KIND_SERVER"]
    assert client.span.parent_span_id.hex() == CALLER_SPAN
    assert server.span.parent_span_id == client.span.span_id
    assert server.span.span_id.hex() == server_span
    assert (client.service, server.service) == ("frontend", "greeter")
    for received in (client, server):
        attributes = {a.key: a.value for a in received.span.attributes}
        assert attributes["rpc.system"].string_value == "grpc"
        assert attributes["network.protocol.version"].string_value == "2"
        assert attributes["url.path"].string_value == "/test.Echo/Meta"
        assert attributes["http.response.status_code"].int_value == 200


def test_spans_go_to_an_https_collector_with_the_configured_headers(mesh: Mesh) -> None:
    """``otlpEndpoint: https://...``: the export is TLS, the collector's certificate checked
    (here against the roots in the sidecars' SSL_CERT_FILE), with ``headers`` on each
    export (an API key)."""
    url = f"https://localhost:{mesh.secure.server_address[1]}"
    mesh.tracing(100.0, url, {"X-Api-Key": "k-123"})
    try:
        deadline = time.monotonic() + 20  # until the new export settings reach the sidecars
        while True:
            trace = f"{time.monotonic_ns():032x}"
            mesh.call({"traceparent": f"00-{trace}-{CALLER_SPAN}-01"})
            time.sleep(0.5)
            if len(mesh.secure.spans_of(trace)) >= 2:
                break
            assert time.monotonic() < deadline, "no span reached the https collector"
        spans = mesh.secure.spans_of(trace)
        assert {r.service for r in spans} >= {"frontend", "orders"}
        with mesh.secure.lock:
            assert mesh.secure.api_keys and set(mesh.secure.api_keys) == {"k-123"}
        plain = [r for r in mesh.collector.spans_of(trace) if r.service != "orders-app"]
        assert not plain  # the sidecars' spans no longer go to the plain collector
    finally:
        mesh.tracing(100.0)
