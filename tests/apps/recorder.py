"""A deliberately naive HTTP/1.1 (and minimal h2c) app that records every byte it reads.

Used by ``tests/integration/test_differential.py`` as the app behind a proxy under test: it is
the kind of server a request-smuggling attack targets, so that anything a proxy lets through
shows up here. Its HTTP/1.1 parsing is lenient on purpose:

- a head ends at the first CRLF CRLF *or* LF LF; lines are split on LF (a CR before it is
  dropped), header names are stripped of blanks and lower-cased, lines without a colon are
  ignored (an obs-fold line ``" x-a: b"`` thus becomes a header ``x-a``);
- the body is framed by the *first* Content-Length (Python's ``int``: ``+5``, `` 5 `` pass),
  else by chunks when any Transfer-Encoding value contains ``chunked`` (chunk sizes read
  with ``int(..., 16)``: ``0x5`` and ``+5`` pass), else there is none;
- whatever follows a request in the buffer is the next request.

Each request it can parse is answered ``200`` with ``x-recorder-seq: N`` (N counts requests
since the last ``reset``), so a test can tell which of the app's answers reached the client:
an answer that never did belongs to a request the proxy did not see (a smuggled one). Bytes
it cannot parse get a 400 and a close. A connection that starts with the HTTP/2 preface is
served as h2c: each stream (headers, DATA, trailers) is one request, answered ``:status 200``.

The server runs on its own asyncio loop in a daemon thread; ``close`` stops it and the thread.
HPACK blocks are decoded with libnghttp2's inflater (cffi, ABI mode), not Gossamer's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

import cffi

__all__ = [
    "H2_PREFACE",
    "Inflater",
    "RecordedRequest",
    "Recorder",
    "frame",
    "hpack_literal",
    "naive_parse",
]

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_BUFFER = 1 << 20

# HTTP/2 frame types and flags (RFC 9113 6).
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9,
)  # fmt: skip
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20

Header = tuple[bytes, bytes]


@dataclass
class RecordedRequest:
    """One request as the naive app understood it."""

    seq: int
    protocol: str  # "http/1.1" or "h2"
    method: bytes
    target: bytes
    headers: list[Header]  # HTTP/1.1: names stripped and lower-cased; h2: as decoded
    body: bytes = b""
    head: bytes = b""  # HTTP/1.1: the raw head as read
    trailers: list[Header] = field(default_factory=list)


class BadMessage(Exception):
    """Bytes even the naive parser cannot read as a request."""


# === HTTP/2 frames and HPACK (just what the tests need) ===


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream & 0x7FFFFFFF
    ) + payload


def _hpack_int(value: int, prefix: int, first: int = 0) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """A header field as an HPACK literal without indexing, new name, no Huffman: any bytes
    (uppercase names, connection-specific fields) go on the wire as given."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


_ffi = cffi.FFI()
_ffi.cdef(
    """
    typedef struct nghttp2_hd_inflater nghttp2_hd_inflater;
    typedef struct {
        uint8_t *name; uint8_t *value; size_t namelen; size_t valuelen; uint8_t flags;
    } nghttp2_nv;
    int nghttp2_hd_inflate_new(nghttp2_hd_inflater **inflater_ptr);
    void nghttp2_hd_inflate_del(nghttp2_hd_inflater *inflater);
    ssize_t nghttp2_hd_inflate_hd2(nghttp2_hd_inflater *inflater, nghttp2_nv *nv_out,
                                   int *inflate_flags, const uint8_t *in, size_t inlen,
                                   int in_final);
    int nghttp2_hd_inflate_end_headers(nghttp2_hd_inflater *inflater);
    """
)
_lib: Any = None


def _nghttp2() -> Any:
    global _lib
    if _lib is None:
        _lib = _ffi.dlopen("libnghttp2.so.14")
    return _lib


class Inflater:
    """An HPACK decoder (one per connection and direction: it keeps the dynamic table)."""

    def __init__(self) -> None:
        lib = _nghttp2()
        ptr = _ffi.new("nghttp2_hd_inflater **")
        if lib.nghttp2_hd_inflate_new(ptr) != 0:
            raise RuntimeError("nghttp2_hd_inflate_new failed")
        self._inflater = _ffi.gc(ptr[0], lib.nghttp2_hd_inflate_del)

    def inflate(self, block: bytes) -> list[Header]:
        """The fields of one whole header block; ``ValueError`` when it is not valid HPACK."""
        lib = _nghttp2()
        nv: Any = _ffi.new("nghttp2_nv *")
        flags = _ffi.new("int *")
        buf = _ffi.from_buffer(block)
        fields: list[Header] = []
        offset = 0
        for _ in range(len(block) + 2):  # each round consumes a byte or ends the block
            flags[0] = 0
            used = lib.nghttp2_hd_inflate_hd2(
                self._inflater, nv, flags, buf + offset, len(block) - offset, 1
            )
            if used < 0:
                raise ValueError(f"HPACK error {used}")
            offset += used
            if flags[0] & 0x02:  # NGHTTP2_HD_INFLATE_EMIT
                fields.append(
                    (
                        bytes(_ffi.buffer(nv.name, nv.namelen)),
                        bytes(_ffi.buffer(nv.value, nv.valuelen)),
                    )
                )
            if flags[0] & 0x01:  # NGHTTP2_HD_INFLATE_FINAL
                lib.nghttp2_hd_inflate_end_headers(self._inflater)
                return fields
            if used == 0 and not flags[0] & 0x02:
                break
        raise ValueError("HPACK block did not end")


# === the naive HTTP/1.1 parser ===


def _find_line(buf: bytes, start: int) -> tuple[bytes, int] | None:
    i = buf.find(b"\n", start)
    if i < 0:
        return None
    return buf[start:i].rstrip(b"\r"), i + 1


def _naive_int(value: bytes, base: int) -> int:
    try:
        return int(value.strip(), base)
    except ValueError as exc:
        raise BadMessage(f"bad number {value!r}") from exc


def naive_parse(buf: bytes, seq: int) -> tuple[RecordedRequest, int] | None:
    """The first request in ``buf`` and the bytes it took; None when more bytes are needed;
    ``BadMessage`` when even this parser gives up."""
    start = 0
    while buf.startswith((b"\r\n", b"\n"), start):  # empty lines before a request
        start += 2 if buf.startswith(b"\r\n", start) else 1
    ends = [i + n for i, n in ((buf.find(b"\r\n\r\n", start), 4), (buf.find(b"\n\n", start), 2))
            if i >= 0]  # fmt: skip
    if not ends:
        if len(buf) > MAX_BUFFER:
            raise BadMessage("head too long")
        return None
    end = min(ends)
    head = buf[start:end]
    lines = [line.rstrip(b"\r") for line in head.split(b"\n")]
    parts = lines[0].split()
    if not parts:
        raise BadMessage("no request line")
    method, target = parts[0], parts[1] if len(parts) > 1 else b""
    headers: list[Header] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip():
            headers.append((name.strip().lower(), value.strip()))
    request = RecordedRequest(seq, "http/1.1", method, target, headers, head=head)
    lengths = [v for n, v in headers if n == b"content-length"]
    chunked = any(b"chunked" in v.lower() for n, v in headers if n == b"transfer-encoding")
    pos = end
    if lengths:
        length = max(0, _naive_int(lengths[0], 10))
        if len(buf) < pos + length:
            return None
        request.body = buf[pos : pos + length]
        return request, pos + length
    if not chunked:
        return request, pos
    body = bytearray()
    while True:
        found = _find_line(buf, pos)
        if found is None:
            return None
        size_line, pos = found
        size = _naive_int(size_line.split(b";")[0], 16)
        if size < 0:
            raise BadMessage("negative chunk size")
        if size == 0:
            break
        if len(buf) < pos + size + 1:
            return None
        body += buf[pos : pos + size]
        pos += size
        found = _find_line(buf, pos)  # the line end after the data
        if found is None:
            return None
        pos = found[1]
    while True:  # trailers, up to an empty line
        found = _find_line(buf, pos)
        if found is None:
            return None
        text, pos = found
        if not text:
            break
        name, colon, value = text.partition(b":")
        if colon:
            request.trailers.append((name.strip().lower(), value.strip()))
    request.body = bytes(body)
    return request, pos


# === the server ===


class _Connection:
    """What the recorder knows of one accepted connection."""

    __slots__ = ("h2", "pending", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.h2 = False
        self.pending = b""  # HTTP/1.1 bytes read but not yet a whole request


class Recorder:
    """The recording app on 127.0.0.1 (an ephemeral port); thread-safe to read."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._raw = bytearray()  # HTTP/1.1 bytes read
        self._requests: list[RecordedRequest] = []
        self._streams = 0  # HTTP/2 streams begun (their bytes are not in _raw)
        self._seq = 0
        self._connections: set[_Connection] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port: int = self._server.sockets[0].getsockname()[1]

    # === what tests read ===

    def reset(self) -> None:
        """Forget what was recorded, and close the connections left inside a request (an
        earlier case's leftovers must not be read as part of the next one's)."""

        async def close_unfinished() -> None:
            for conn in list(self._connections):
                if conn.pending:
                    conn.writer.close()
                    self._connections.discard(conn)

        asyncio.run_coroutine_threadsafe(close_unfinished(), self._loop).result(5)
        with self._lock:
            self._raw.clear()
            self._requests.clear()
            self._streams = 0
            self._seq = 0

    def snapshot(self) -> tuple[bytes, list[RecordedRequest], int]:
        """Since the last ``reset``: every HTTP/1.1 byte read, every request parsed, and how
        many HTTP/2 streams began."""
        with self._lock:
            return bytes(self._raw), list(self._requests), self._streams

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for conn in list(self._connections):
                conn.writer.close()
            await asyncio.sleep(0)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    # === the loop thread ===

    def _read(self, data: bytes) -> None:
        with self._lock:
            self._raw += data

    def _stream_begun(self) -> None:
        with self._lock:
            self._streams += 1

    def _parsed(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(writer)
        self._connections.add(conn)
        try:
            buf = b""
            while len(buf) < len(H2_PREFACE) and H2_PREFACE.startswith(buf):
                data = await reader.read(65536)
                if not data:
                    self._read(buf)
                    return
                buf += data
            if buf.startswith(H2_PREFACE):
                conn.h2 = True
                await _H2(self, reader, writer).serve(buf[len(H2_PREFACE) :])
                return
            self._read(buf)
            while True:
                buf, keep = self._answer_http1(buf, writer)
                conn.pending = buf
                await writer.drain()
                if not keep:
                    return
                data = await reader.read(65536)
                if not data:
                    return
                self._read(data)
                buf += data
        except (ConnectionError, OSError):
            return
        finally:
            self._connections.discard(conn)
            writer.close()

    def _answer_http1(self, buf: bytes, writer: asyncio.StreamWriter) -> tuple[bytes, bool]:
        """Answer each whole request in ``buf``; the bytes left, and whether to go on."""
        while buf:
            try:
                parsed = naive_parse(buf, self._seq + 1)
            except BadMessage as exc:
                body = f"recorder: {exc}\n".encode()
                writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%b" % (len(body), body))  # fmt: skip
                return b"", False
            if parsed is None:
                return buf, True
            request, used = parsed
            request.seq = self._next_seq()
            self._parsed(request)
            buf = buf[used:]
            body = b"recorded %d %b\n" % (request.seq, request.target[:200])
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-recorder-seq: %d\r\n\r\n%b"
                         % (len(body), request.seq, body))  # fmt: skip
            if any(n == b"connection" and b"close" in v.lower() for n, v in request.headers):
                return b"", False
        return buf, True


class _H2:
    """A minimal h2c server on one connection: enough to record and answer streams."""

    def __init__(
        self, recorder: Recorder, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.recorder = recorder
        self.reader = reader
        self.writer = writer
        self.inflater = Inflater()
        self.streams: dict[int, RecordedRequest] = {}
        self.block = b""  # a header block waiting for its CONTINUATION frames
        self.block_stream = 0
        self.block_end_stream = False

    async def serve(self, buf: bytes) -> None:
        self.writer.write(frame(SETTINGS, 0, 0, b""))
        while True:
            while len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + length:
                    break
                kind, flags = buf[3], buf[4]
                stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                payload = buf[9 : 9 + length]
                buf = buf[9 + length :]
                if not self.on_frame(kind, flags, stream, payload):
                    await self.writer.drain()
                    return
            await self.writer.drain()
            data = await self.reader.read(65536)
            if not data:
                return
            buf += data

    def on_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> bool:
        if kind == SETTINGS and not flags & ACK:
            self.writer.write(frame(SETTINGS, ACK, 0, b""))
        elif kind == PING and not flags & ACK:
            self.writer.write(frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            return False
        elif kind == RST_STREAM:
            self.streams.pop(stream, None)
        elif kind == HEADERS:
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY:
                payload = payload[5:]
            self.block, self.block_stream = payload, stream
            self.block_end_stream = bool(flags & END_STREAM)
            if flags & END_HEADERS:
                return self.on_block()
        elif kind == CONTINUATION:
            self.block += payload
            if flags & END_HEADERS:
                return self.on_block()
        elif kind == DATA:
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            request = self.streams.get(stream)
            if request is not None:
                request.body += payload
            if payload:
                increment = struct.pack(">I", len(payload))
                self.writer.write(frame(WINDOW_UPDATE, 0, 0, increment))
                self.writer.write(frame(WINDOW_UPDATE, 0, stream, increment))
            if flags & END_STREAM:
                self.finish(stream)
        return True

    def on_block(self) -> bool:
        try:
            fields = self.inflater.inflate(self.block)
        except ValueError:
            self.writer.write(frame(GOAWAY, 0, 0, struct.pack(">II", 0, 9)))  # COMPRESSION
            return False
        stream = self.block_stream
        request = self.streams.get(stream)
        if request is None:
            pseudo = dict(f for f in fields if f[0].startswith(b":"))
            request = RecordedRequest(
                0, "h2", pseudo.get(b":method", b""), pseudo.get(b":path", b""), fields
            )
            self.streams[stream] = request
            self.recorder._stream_begun()
        else:
            request.trailers.extend(fields)
        if self.block_end_stream:
            self.finish(stream)
        return True

    def finish(self, stream: int) -> None:
        request = self.streams.pop(stream, None)
        if request is None:
            return
        request.seq = self.recorder._next_seq()
        self.recorder._parsed(request)
        block = b"\x88" + hpack_literal(b"x-recorder-seq", b"%d" % request.seq)
        self.writer.write(frame(HEADERS, END_HEADERS | END_STREAM, stream, block))
