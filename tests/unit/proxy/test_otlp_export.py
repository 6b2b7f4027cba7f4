"""Spans out of the sidecar (proxy/observe/otlp.py): the protobuf body is what the official
``opentelemetry-proto`` package decodes, batches go to a real local HTTP server, a full queue
and a collector that is down drop spans and count them, and nothing else."""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gossamer.proxy.observe.otlp import CLIENT, SERVER, SpanExporter, SpanRecord, encode_request

TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"


def _span(n: int, kind: int = SERVER, error: bool = False) -> SpanRecord:
    return SpanRecord(TRACE, b"%016x" % (n + 1), b"00f067aa0ba902b7", b"k=v", f"GET orders {n}",
                      kind, 1_700_000_000_000_000_000 + n, 1_700_000_000_001_000_000 + n,
                      (("http.request.method", "GET"), ("http.response.status_code", 503),
                       ("ratio", 0.25), ("grpc", False), ("url.path", "/é")), error)  # fmt: skip


def test_the_body_decodes_with_the_official_package() -> None:
    body = encode_request([("service.name", "orders"), ("service.namespace", "default")],
                          [_span(0), _span(1, CLIENT, error=True)])  # fmt: skip
    request = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = request.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource == {"service.name": "orders", "service.namespace": "default"}
    (scope,) = resource_spans.scope_spans
    assert scope.scope.name == "gossamer"
    first, second = scope.spans
    assert first.trace_id.hex() == TRACE.decode() and first.span_id.hex() == "0000000000000001"
    assert first.parent_span_id.hex() == "00f067aa0ba902b7" and first.trace_state == "k=v"
    assert first.kind == Span.SPAN_KIND_SERVER and second.kind == Span.SPAN_KIND_CLIENT
    assert first.name == "GET orders 0"
    assert first.start_time_unix_nano == 1_700_000_000_000_000_000
    assert first.end_time_unix_nano == 1_700_000_000_001_000_000
    values = {a.key: a.value for a in first.attributes}
    assert values["http.request.method"].string_value == "GET"
    assert values["http.response.status_code"].int_value == 503
    assert values["ratio"].double_value == 0.25
    assert values["grpc"].HasField("bool_value") and not values["grpc"].bool_value
    assert values["url.path"].string_value == "/é"
    assert first.status.code == Status.STATUS_CODE_UNSET
    assert second.status.code == Status.STATUS_CODE_ERROR


class Collector:
    """A real HTTP/1.1 server on loopback taking OTLP posts (keep-alive)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[tuple[bytes, dict[bytes, bytes], bytes]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                headers: dict[bytes, bytes] = {}
                while (h := await reader.readline()) != b"\r\n":
                    name, _, value = h.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers[b"content-length"]))
                self.requests.append((line, headers, body))
                writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % self.status)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    def spans(self) -> list[Any]:
        return [span for _, _, body in self.requests
                for rs in ExportTraceServiceRequest.FromString(body).resource_spans
                for ss in rs.scope_spans for span in ss.spans]  # fmt: skip


def test_batches_reach_the_collector_over_one_connection() -> None:
    async def scenario() -> None:
        collector = Collector()
        port = await collector.start()
        exporter = SpanExporter(f"http://127.0.0.1:{port}", [("service.name", "x")],
                                batch=3, interval=0.05)  # fmt: skip
        for n in range(7):
            exporter.record(_span(n))
        for _ in range(100):
            if exporter.exported == 7:
                break
            await asyncio.sleep(0.02)
        await exporter.close()
        await collector.stop()
        assert exporter.exported == 7 and exporter.dropped_full == exporter.dropped_failed == 0
        assert [len(ExportTraceServiceRequest.FromString(b).resource_spans[0].scope_spans[0]
                    .spans) for _, _, b in collector.requests] == [3, 3, 1]  # fmt: skip
        line, headers, _ = collector.requests[0]
        assert line == b"POST /v1/traces HTTP/1.1\r\n"
        assert headers[b"content-type"] == b"application/x-protobuf"
        assert [s.name for s in collector.spans()] == [f"GET orders {n}" for n in range(7)]

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_full_queue_and_a_refusing_or_absent_collector_drop_and_count() -> None:
    async def scenario() -> None:
        collector = Collector(status=503)
        port = await collector.start()
        exporter = SpanExporter(f"http://127.0.0.1:{port}/custom", [], max_queue=4,
                                batch=100, interval=0.05)  # fmt: skip
        for n in range(6):
            exporter.record(_span(n))  # two over the queue
        assert exporter.dropped_full == 2
        for _ in range(100):
            if exporter.dropped_failed == 4:
                break
            await asyncio.sleep(0.02)
        assert exporter.dropped_failed == 4 and exporter.exported == 0
        assert collector.requests[0][0] == b"POST /custom HTTP/1.1\r\n"
        await collector.stop()
        await asyncio.sleep(0.05)
        gone = SpanExporter("http://127.0.0.1:9/", [], interval=0.05)  # nothing listens
        gone.record(_span(0))
        for _ in range(100):
            if gone.dropped_failed == 1:
                break
            await asyncio.sleep(0.02)
        assert gone.dropped_failed == 1
        await gone.close()
        await exporter.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
