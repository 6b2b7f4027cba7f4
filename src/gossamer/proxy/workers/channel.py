"""The pipes between a multi-process sidecar's supervisor and its workers (``--workers N``).

Every worker has two ``socketpair`` channels to its supervisor. Both carry frames: a 4-byte
big-endian length, then that many bytes of UTF-8 JSON holding one object with a ``"type"``.

Control channel (asyncio on both ends, messages in order). Supervisor to worker:

- ``{"type":"init","settings":B64,"cert_generation":G}``: always first; the worker's settings
  (a pickled ``ProxySettings`` with concrete ports) and the certificate generation in force;
- ``{"type":"snapshot","version":N,"snapshot":{...}}``: a snapshot the supervisor compiled
  and ACKed;
- ``{"type":"cert","generation":G}``: the workdir holds a new certificate, reload it;
- ``{"type":"drain"}``: stop accepting, finish in-flight work, exit 0.

Worker to supervisor:

- ``{"type":"started","pid":P,"cert_generation":G,"cert_ok":bool}``: listeners are bound;
- ``{"type":"applied","version":N,"error":null|"..."}``: the answer to a snapshot;
- ``{"type":"cert","generation":G,"ok":bool}``: the answer to a cert reload;
- ``{"type":"subscribe","services":[...]}``: on-demand discovery of a host it does not know;
- ``{"type":"jwks-refresh","issuer":"..."}``: a token was signed by a key it does not have.

Metrics channel: the supervisor writes ``{"type":"scrape","id":K}`` and waits (blocking, with a
deadline; see ``BlockingChannel``) for ``{"type":"metrics","id":K,"text":"..."}``, the worker's
Prometheus exposition at that moment. A worker closing its end, or the supervisor closing its
end, means the other side is gone.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from typing import Any

__all__ = ["MAX_FRAME", "BlockingChannel", "FrameError", "encode", "read_frame"]

MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")


class FrameError(Exception):
    """A frame that is too large or not a JSON object with a type."""


def encode(message: dict[str, Any]) -> bytes:
    """One frame holding ``message``."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes is over the limit")
    return _HEADER.pack(len(body)) + body


def _decode(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise FrameError(f"bad JSON in frame: {exc}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise FrameError("frame is not an object with a type")
    return message


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None when the other side closed the channel."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise FrameError(f"frame of {size} bytes is over the limit")
        body = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return _decode(body)


class BlockingChannel:
    """The supervisor's end of a metrics channel: request/response with a deadline.

    Used from synchronous code (the admin server's ``render_metrics``). A reply that misses its
    deadline is not lost to the stream: the partial bytes stay buffered, and a later
    ``receive`` skips replies to earlier requests by their id.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self.broken = False

    def send(self, message: dict[str, Any], timeout: float) -> bool:
        """Write one frame; False (and the channel is broken) when that fails."""
        if self.broken:
            return False
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(encode(message))
        except OSError:  # a partial write would leave the stream out of step
            self.broken = True
            return False
        return True

    def receive(self, deadline: float, request_id: int) -> dict[str, Any] | None:
        """The reply to ``request_id`` if it arrives before ``deadline`` (monotonic seconds)."""
        while not self.broken:
            message = self._take()
            if message is not None:
                if message.get("id") == request_id:
                    return message
                continue  # a late answer to an earlier request
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                self._sock.settimeout(remaining)
                chunk = self._sock.recv(1 << 20)
            except TimeoutError:
                return None
            except OSError:
                chunk = b""
            if not chunk:
                self.broken = True
                return None
            self._buffer += chunk
        return None

    def _take(self) -> dict[str, Any] | None:
        if len(self._buffer) < _HEADER.size:
            return None
        (size,) = _HEADER.unpack_from(self._buffer)
        if size > MAX_FRAME:
            self.broken = True
            return None
        end = _HEADER.size + size
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[_HEADER.size : end])
        del self._buffer[:end]
        try:
            return _decode(body)
        except FrameError:
            return None

    def close(self) -> None:
        self.broken = True
        self._sock.close()
