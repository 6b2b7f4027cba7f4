"""Spans out of the sidecar: OTLP/HTTP with protobuf bodies, batched, off the request path.

The request path only appends a finished ``SpanRecord`` to a bounded queue (``record``); when the
queue is full the span is dropped and counted. A task of its own (``run``) sends the queue in
batches of at most ``batch`` spans, as soon as a batch is full or every ``interval`` seconds,
as ``POST <endpoint>`` (``/v1/traces`` unless the endpoint names a path) with
``content-type: application/x-protobuf`` and the configured headers over one kept-alive
HTTP/1.1 connection (TLS for ``https://``, the collector's certificate verified). A batch the
collector does not take (no answer within ``EXPORT_TIMEOUT``, or a status other than 2xx) is
dropped and counted: spans are telemetry, never worth memory or a stall.

The body is an ``ExportTraceServiceRequest`` of the OpenTelemetry protocol, encoded here
(``encode_request``: a few message types, each field by its number) so that the sidecar loads
no protobuf runtime; the tests decode it with the official ``opentelemetry-proto`` package.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import time
from binascii import unhexlify
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["CLIENT", "SERVER", "SpanExporter", "SpanRecord", "encode_request", "parse_endpoint"]

log = logging.getLogger("gossamer.proxy.tracing")

SERVER = 2  # SpanKind
CLIENT = 3
STATUS_ERROR = 2
EXPORT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0  # what is queued at close is sent within this, or dropped (a sidecar stops)
SCOPE = "gossamer"
Value = str | int | float | bool


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One finished span, as recorded on the request path (ids as lower-case hex)."""

    trace_id: bytes
    span_id: bytes
    parent_id: bytes
    state: bytes
    name: str
    kind: int
    start_ns: int  # unix nanoseconds
    end_ns: int
    attributes: tuple[tuple[str, Value], ...]
    error: bool


# --------------------------------------------------------------------------- protobuf


_SMALL = [bytes((n,)) for n in range(0x80)]  # one-byte varints
_KEYS: dict[str, bytes] = {}  # an attribute key's encoded field, made once per key
_FIXED64_7 = b"\x39"  # field 7 (start time), wire type 1
_FIXED64_8 = b"\x41"  # field 8 (end time), wire type 1
_KIND = b"\x30"  # field 6, varint
_ERROR_STATUS = b"\x7a\x02\x18\x02"  # field 15: Status{code (3) = ERROR (2)}


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _text(number: int, text: str) -> bytes:
    return _field(number, text.encode()) if text else b""


def _any_value(value: Value) -> bytes:
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    return b"\x21" + struct.pack("<d", value)


def _attributes(number: int, attributes: Sequence[tuple[str, Value]]) -> bytes:
    parts = []
    keys = _KEYS
    for key, value in attributes:
        encoded = keys.get(key)
        if encoded is None:
            encoded = keys[key] = _text(1, key)
        parts.append(_field(number, encoded + _field(2, _any_value(value))))
    return b"".join(parts)


def _span(span: SpanRecord) -> bytes:
    """A ``Span`` message's bytes."""
    parts = [
        b"\x0a\x10", unhexlify(span.trace_id), b"\x12\x08", unhexlify(span.span_id),
        _field(3, span.state) if span.state else b"",
        b"\x22\x08" + unhexlify(span.parent_id) if span.parent_id else b"",
        _text(5, span.name), _KIND, _SMALL[span.kind],
        _FIXED64_7, struct.pack("<Q", span.start_ns), _FIXED64_8, struct.pack("<Q", span.end_ns),
        _attributes(9, span.attributes),
        _ERROR_STATUS if span.error else b"",
    ]  # fmt: skip
    return b"".join(parts)


def encode_request(resource: Sequence[tuple[str, Value]], spans: Sequence[SpanRecord]) -> bytes:
    """An ``ExportTraceServiceRequest`` holding ``spans`` of one resource (the sidecar)."""
    scope = _field(1, _text(1, SCOPE))
    scope_spans = scope + b"".join(_field(2, _span(span)) for span in spans)
    resource_spans = _field(1, _attributes(1, resource)) + _field(2, scope_spans)
    return _field(1, resource_spans)


# --------------------------------------------------------------------------- export


def parse_endpoint(url: str) -> tuple[bool, str, int, str]:
    """``http(s)://host[:port][/path]`` → (TLS?, host, port, path); ``ValueError`` when it is
    not one (the port defaults to 4318 and the path to ``/v1/traces``, OTLP/HTTP's)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected http(s)://host[:port][/path], got {url!r}")
    return parts.scheme == "https", parts.hostname, parts.port or 4318, parts.path or "/v1/traces"


class SpanExporter:
    """Batches spans to one OTLP/HTTP endpoint (see the module docstring)."""

    def __init__(
        self,
        endpoint: str,
        resource: Sequence[tuple[str, Value]],
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        max_queue: int = 2048,
        batch: int = 512,
        interval: float = 1.0,
    ) -> None:
        self.endpoint = endpoint
        tls, self.host, self.port, self.path = parse_endpoint(endpoint)
        # https: the collector's certificate is checked against the system's roots (or
        # SSL_CERT_FILE / SSL_CERT_DIR), and its name against the endpoint's host.
        self._tls = ssl.create_default_context() if tls else None
        self._extra = b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)
        self.resource = tuple(resource)
        self.max_queue = max_queue
        self.batch = batch
        self.interval = interval
        self._queue: deque[SpanRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.exported = 0
        self.dropped_full = 0  # the queue was full
        self.dropped_failed = 0  # the collector did not take the batch
        self._last_warning = 0.0

    def record(self, span: SpanRecord) -> None:
        """Queue a finished span (on the request path: an append and two tests)."""
        queue = self._queue
        if len(queue) >= self.max_queue:
            self.dropped_full += 1
            return
        queue.append(span)
        if len(queue) >= self.batch:
            self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="span-export")

    async def run(self) -> None:
        """Send batches until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            while self._queue:
                await self._send_batch()

    async def close(self) -> None:
        """Send what is queued (bounded by ``CLOSE_TIMEOUT``), then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                while self._queue:
                    await self._send_batch()
        self.dropped_failed += len(self._queue)
        self._queue.clear()
        self._disconnect()

    async def _send_batch(self) -> None:
        spans = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
        body = encode_request(self.resource, spans)
        try:
            async with asyncio.timeout(EXPORT_TIMEOUT):
                status = await self._post(body)
        except asyncio.CancelledError:  # stopped mid-export: those spans are lost, and counted
            self._disconnect()
            self.dropped_failed += len(spans)
            raise
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            self._disconnect()
            self._failed(len(spans), f"{type(exc).__name__}: {exc}")
            return
        if 200 <= status < 300:
            self.exported += len(spans)
        else:
            self._failed(len(spans), f"the collector answered {status}")

    def _failed(self, count: int, why: str) -> None:
        self.dropped_failed += count
        now = time.monotonic()
        if now - self._last_warning > 10.0:  # at most one warning per 10 s
            self._last_warning = now
            log.warning("dropped %d spans: cannot export to %s (%s)", count, self.endpoint, why)

    async def _post(self, body: bytes) -> int:
        if self._conn is None or self._conn[1].is_closing():
            self._conn = await asyncio.open_connection(self.host, self.port, ssl=self._tls)
        reader, writer = self._conn
        host = self.host if ":" not in self.host else f"[{self.host}]"
        writer.write(
            b"POST %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/x-protobuf\r\n"
            b"%scontent-length: %d\r\n\r\n" % (self.path.encode(), host.encode(), self.port,
                                              self._extra, len(body)) + body)  # fmt: skip
        await writer.drain()
        status_line = await reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length, close = 0, False
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value.strip())
            elif lowered == b"connection" and value.strip().lower() == b"close":
                close = True
            elif lowered == b"transfer-encoding":
                close = True  # chunked answers are not expected from a collector: start over
        if length:
            await reader.readexactly(length)
        if close:
            self._disconnect()
        return status

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None
