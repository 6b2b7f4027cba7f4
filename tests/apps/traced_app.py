"""An app instrumented with the OpenTelemetry Python SDK, as a team would write it: it takes
the trace context its sidecar sends (W3C), records a SERVER span of its own as the child, and
exports it over OTLP/HTTP (the SDK's exporter) to the collector it is given. It answers every
GET with the headers it received, as JSON.

Usage: python tests/apps/traced_app.py PORT SERVICE_NAME OTLP_TRACES_URL
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = TraceContextTextMapPropagator()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    tracer: trace.Tracer

    def do_GET(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        parent = PROPAGATOR.extract(headers)
        with self.tracer.start_as_current_span("handle " + self.path.split("?")[0],
                                               context=parent, kind=trace.SpanKind.SERVER):
            body = json.dumps({"headers": headers}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    port, service, endpoint = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    Handler.tracer = trace.get_tracer("traced-app")
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"listening on {port}", flush=True)
    try:
        server.serve_forever()
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
