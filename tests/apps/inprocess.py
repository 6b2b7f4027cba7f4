"""Apps that run inside a test's event loop (``tests.sidecar_harness.LoopThread``), for
in-process sidecars: an HTTP/1.1 app that answers with what it received, a TCP echo."""

from __future__ import annotations

import asyncio
import json

__all__ = ["Echo", "RecordingApp"]


class RecordingApp(asyncio.Protocol):
    """HTTP/1.1 app: answers each request with its head (as JSON lines), keep-alive, and
    keeps the request lines it saw (``seen``)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.seen: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:  # requests without bodies only
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            self.seen.append(lines[0])
            body = json.dumps(
                {"line": lines[0], "headers": [line.split(": ", 1) for line in lines[1:]]}
            ).encode()
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%b" % (len(body), body)
            )


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"echo:" + data)
