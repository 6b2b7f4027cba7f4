"""The sidecar's admin server (localhost only): ``/live``, ``/ready``, ``/metrics``, ``/config``.

A small HTTP/1.1 server on asyncio streams. It is not on the request path, so it favours being
simple and strict: GET only, bounded header size and read timeouts, keep-alive for clients that
want it, and every answer generated from an ``AdminState`` the proxy provides.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol

from gossamer.proxy.process.settings import Address

__all__ = ["AdminServer", "AdminState"]

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT = "text/plain; charset=utf-8"
_METRICS = "text/plain; version=0.0.4; charset=utf-8"
_JSON = "application/json"


class AdminState(Protocol):
    """What the admin server reports; implemented by the proxy."""

    def is_live(self) -> bool: ...

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason when not ready)."""
        ...

    def render_metrics(self) -> bytes:
        """Prometheus text exposition format 0.0.4."""
        ...

    def config_json(self) -> dict[str, Any]: ...


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Parse a request head; return (method, path, version, lower-cased headers)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest(400, "unsupported HTTP version")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise _BadRequest(400, "malformed header line")
        headers[name.lower()] = value.strip()
    return method, target.split("?", 1)[0], version, headers


def _response(status: int, body: bytes, content_type: str = _TEXT, *, close: bool = False) -> bytes:
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
    ]
    if status == 405:
        head.append("Allow: GET")
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class AdminServer:
    """Serves ``AdminState`` over HTTP/1.1 on a (localhost) address."""

    def __init__(self, address: Address, state: AdminState) -> None:
        self._address = address
        self._state = state
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Address:
        """Listen; return the bound address (useful with port 0)."""
        self._server = await asyncio.start_server(
            self._serve, self._address.host, self._address.port, limit=MAX_HEAD
        )
        bound = Address.bound(self._server)
        log.info("admin server listening on %s", bound)
        return bound

    async def close(self) -> None:
        """Stop listening and close open admin connections."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            timeout = HEAD_TIMEOUT
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
                except asyncio.IncompleteReadError:
                    return  # the client went away between requests
                except asyncio.LimitOverrunError:
                    writer.write(_response(431, b"request head too large\n", close=True))
                    return
                except TimeoutError:
                    return
                keep_alive = self._handle(head, writer)
                await writer.drain()
                if not keep_alive:
                    return
                timeout = IDLE_TIMEOUT
        except (ConnectionError, OSError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    def _handle(self, head: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; return whether the connection may be kept open."""
        try:
            method, path, version, headers = _parse_head(head)
        except _BadRequest as exc:
            writer.write(_response(exc.status, f"{exc}\n".encode(), close=True))
            return False
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        connection = headers.get("connection", "").lower()
        keep_alive = not has_body and (
            connection == "keep-alive" if version == "HTTP/1.0" else connection != "close"
        )
        if method != "GET":
            status, body, ctype = 405, b"method not allowed\n", _TEXT
        else:
            try:
                status, body, ctype = self._route(path)
            except Exception as exc:
                log.exception("admin endpoint %s failed", path)
                # The text stays in the log: callers get the kind of failure only.
                text = f"internal error ({type(exc).__name__}); see the sidecar's log\n"
                status, body, ctype = 500, text.encode(), _TEXT
        writer.write(_response(status, body, ctype, close=not keep_alive))
        return keep_alive

    def _route(self, path: str) -> tuple[int, bytes, str]:
        state = self._state
        if path == "/live":
            return (200, b"live\n", _TEXT) if state.is_live() else (503, b"not live\n", _TEXT)
        if path == "/ready":
            ready, reason = state.readiness()
            if ready:
                return 200, b"ready\n", _TEXT
            return 503, f"not ready: {reason}\n".encode(), _TEXT
        if path == "/metrics":
            return 200, state.render_metrics(), _METRICS
        if path == "/config":
            return 200, json.dumps(state.config_json(), indent=2).encode() + b"\n", _JSON
        return 404, b"not found\n", _TEXT
