"""A tiny OTLP/HTTP trace receiver for trying the mesh's tracing locally: it takes what the
sidecars (and apps instrumented with OpenTelemetry) export, and prints each trace as a tree
once no span of it has arrived for a second.

    .venv/bin/python examples/tracing/print_traces.py [--port 4318] [--traces N]

``--traces N`` exits after printing N traces. Spans are decoded with the official
``opentelemetry-proto`` package. For real use, point ``otlpEndpoint`` at an OpenTelemetry
Collector, Jaeger or Tempo instead.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

QUIET = 1.0  # seconds without a new span before a trace is printed
KINDS = {Span.SPAN_KIND_SERVER: "SERVER", Span.SPAN_KIND_CLIENT: "CLIENT"}


class Traces:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: dict[bytes, list[tuple[str, Any]]] = defaultdict(list)
        self.last: dict[bytes, float] = {}

    def add(self, service: str, span: Any) -> None:
        with self.lock:
            self.spans[span.trace_id].append((service, span))
            self.last[span.trace_id] = time.monotonic()

    def ready(self) -> list[list[tuple[str, Any]]]:
        now = time.monotonic()
        with self.lock:
            done = [t for t, at in self.last.items() if now - at > QUIET]
            for trace_id in done:
                del self.last[trace_id]
            return [self.spans.pop(trace_id) for trace_id in done]


def render(spans: list[tuple[str, Any]]) -> str:
    """One trace as an indented tree, parents before children, siblings by start time."""
    by_id = {span.span_id: (service, span) for service, span in spans}
    children: dict[bytes, list[tuple[str, Any]]] = defaultdict(list)
    roots = []
    for service, span in sorted(spans, key=lambda item: item[1].start_time_unix_nano):
        if span.parent_span_id in by_id:
            children[span.parent_span_id].append((service, span))
        else:
            roots.append((service, span))
    start = min(span.start_time_unix_nano for _, span in spans)
    end = max(span.end_time_unix_nano for _, span in spans)
    lines = [f"trace {spans[0][1].trace_id.hex()}  {len(spans)} spans, "
             f"{(end - start) / 1e6:.1f} ms"]  # fmt: skip

    def walk(item: tuple[str, Any], prefix: str, last: bool) -> None:
        service, span = item
        attributes = {a.key: a.value for a in span.attributes}
        status = attributes.get("http.response.status_code")
        code = str(status.int_value) if status is not None else "-"
        error = "  ERROR" if span.status.code == Status.STATUS_CODE_ERROR else ""
        lines.append(f"{prefix}{'└─ ' if last else '├─ '}{service:<10} "
                     f"{KINDS.get(span.kind, 'INTERNAL'):<8} {span.name:<20} {code:>3} "
                     f"{(span.end_time_unix_nano - span.start_time_unix_nano) / 1e6:7.1f} ms"
                     f"{error}")  # fmt: skip
        kids = children.get(span.span_id, [])
        for i, kid in enumerate(kids):
            walk(kid, prefix + ("   " if last else "│  "), i == len(kids) - 1)

    for i, root in enumerate(roots):
        walk(root, "", i == len(roots) - 1)
    return "\n".join(lines)


def handler(traces: Traces) -> type[BaseHTTPRequestHandler]:
    class Receive(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            try:
                request = ExportTraceServiceRequest.FromString(body)
            except ValueError:
                self.send_response(400)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            for resource_spans in request.resource_spans:
                service = next((a.value.string_value for a in resource_spans.resource.attributes
                                if a.key == "service.name"), "?")  # fmt: skip
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        traces.add(service, span)
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return Receive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--traces", type=int, default=0, help="exit after this many traces")
    args = parser.parse_args()
    traces = Traces()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(traces))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"receiving OTLP/HTTP traces on http://127.0.0.1:{args.port}/v1/traces", flush=True)
    printed = 0
    try:
        while not args.traces or printed < args.traces:
            time.sleep(0.2)
            for spans in traces.ready():
                print(render(spans) + "\n", flush=True)
                printed += 1
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
