"""What the demo apps share: a tiny JSON/HTML server on ThreadingHTTPServer and a JSON client.

Stdlib only. ``fetch_json`` builds a fresh urllib opener per call, so it honours the current
``HTTP_PROXY`` (that is how the apps reach each other through their sidecar).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "CALL_TIMEOUT",
    "TRACE_HEADERS",
    "DependencyError",
    "Request",
    "Response",
    "Route",
    "fetch_json",
    "instance_name",
    "json_response",
    "main",
    "make_server",
]

CALL_TIMEOUT = 5.0
PEER_HEADER = "x-gossamer-peer-identity"
# What every app in a mesh passes from the request it serves to the calls it makes, so that
# the sidecars' spans of one request join into one trace (docs/internals.md §6).
TRACE_HEADERS = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
                 "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "x-request-id")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Request:
    path: str
    headers: Mapping[str, str]

    def passed_on(self, *extra: str) -> dict[str, str]:
        """The trace headers (and ``extra`` ones) this request came with, to send on."""
        return {name: self.headers[name] for name in (*TRACE_HEADERS, *extra)
                if name in self.headers}  # fmt: skip

    @property
    def peer_identity(self) -> str | None:
        """The caller's identity as the mesh reports it (just shown, never trusted here)."""
        return self.headers.get(PEER_HEADER)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


Route = Callable[[Request], Response]


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data, indent=1).encode() + b"\n")


def instance_name(service: str) -> str:
    """A readable name of this instance: ``$GOSSAMER_INSTANCE``, else host, port and pid."""
    return os.environ.get("GOSSAMER_INSTANCE") or (
        f"{service}@{socket.gethostname()}:{os.environ.get('PORT', '?')} pid {os.getpid()}"
    )


class DependencyError(Exception):
    """A call to another service failed; the message says how."""


def fetch_json(url: str, *, headers: Mapping[str, str] | None = None,
               timeout: float = CALL_TIMEOUT) -> Any:
    """GET ``url`` (through ``HTTP_PROXY`` when set) and decode its JSON answer."""
    opener = urllib.request.build_opener()  # reads the proxy settings now
    request = urllib.request.Request(url, headers={"Accept": "application/json", **(headers or {})})
    try:
        with opener.open(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        cause = exc.headers.get("x-gossamer-error")
        raise DependencyError(
            f"{url} answered {exc.code}" + (f" ({cause})" if cause else "")
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DependencyError(f"{url} failed: {reason}") from exc
    except ValueError as exc:
        raise DependencyError(f"{url} did not answer JSON") from exc


def make_server(routes: Mapping[str, Route], port: int,
                host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """An HTTP server answering GET for ``routes`` (path → handler), plus ``/healthz``."""
    table = {"/healthz": lambda request: Response(200, b"ok\n", "text/plain"), **routes}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes: without this, Nagle's algorithm holds
        # the body until the peer's delayed ACK (40 ms per keep-alive request).
        disable_nagle_algorithm = True
        server_version = "storefront-demo"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            route = table.get(path)
            if route is None:
                response = json_response({"error": "not found", "path": path}, 404)
            else:
                try:
                    response = route(Request(path, {k.lower(): v for k, v in self.headers.items()}))
                except Exception as exc:  # a demo answers 500 instead of dropping the socket
                    response = json_response({"error": f"{type(exc).__name__}: {exc}"}, 500)
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(response.body)

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    return ThreadingHTTPServer((host, port), Handler)


def main(name: str, routes: Mapping[str, Route]) -> int:
    """Serve ``routes`` on 127.0.0.1:$PORT until interrupted."""
    port = int(os.environ.get("PORT", "0"))
    server = make_server(routes, port)
    print(f"{name} listening on 127.0.0.1:{server.server_address[1]}", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
