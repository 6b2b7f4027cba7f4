"""Sans-IO header rules for HTTP/2 and gRPC messages the proxy forwards or generates.

This module owns: which request fields the proxy reads (``:method``, ``:authority``/``host``,
``x-request-id``, gRPC content type) in one pass while building the forwarded list; the header
blocks of responses the proxy generates itself (``x-gossamer-error`` always, and for gRPC
calls ``grpc-status``/``grpc-message`` so gRPC clients see the cause); reading ``grpc-status``
from trailers; and the HTTP-status-to-gRPC-code mapping of the gRPC spec. No I/O.

Header names arrive lowercase: nghttp2 refuses uppercase names and connection-specific fields
in HTTP/2, so there is nothing hop-by-hop left to strip here.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "GRPC_CANCELLED",
    "RequestScan",
    "error_body",
    "error_headers",
    "grpc_code_for_http",
    "grpc_status_of",
    "percent_encode",
    "scan_request",
]

Header = tuple[bytes, bytes]

GRPC_CANCELLED = 1
_GRPC_CONTENT_TYPE = b"application/grpc"

# https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md
_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


class RequestScan:
    """What one pass over a request's header block found, and the list to forward."""

    __slots__ = ("authority", "grpc", "kept", "method", "request_id")

    def __init__(self) -> None:
        self.kept: list[Header] = []
        self.method = b""
        self.authority = b""
        self.request_id: bytes | None = None
        self.grpc = False


def scan_request(headers: Iterable[Header], drop: frozenset[bytes]) -> RequestScan:
    """Forwardable headers (minus ``drop``) plus the fields the proxy routes and records by."""
    scan = RequestScan()
    kept = scan.kept
    host = b""
    for pair in headers:
        name = pair[0]
        if name in drop:
            continue
        kept.append(pair)
        if name[0] == 58:  # ':'
            if name == b":authority":
                scan.authority = pair[1]
            elif name == b":method":
                scan.method = pair[1]
        elif name == b"content-type":
            scan.grpc = pair[1].startswith(_GRPC_CONTENT_TYPE)
        elif name == b"x-request-id":
            scan.request_id = pair[1]
        elif name == b"host":
            host = pair[1]
    if not scan.authority:
        scan.authority = host
    return scan


def grpc_status_of(headers: Iterable[Header]) -> int | None:
    """The ``grpc-status`` in a trailer (or trailers-only) block, None when absent or bad."""
    for name, value in headers:
        if name == b"grpc-status":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def grpc_code_for_http(status: int) -> int:
    """The gRPC status a client infers from an HTTP status without ``grpc-status``."""
    return _HTTP_TO_GRPC.get(status, 2)  # UNKNOWN


def percent_encode(text: str) -> bytes:
    """``grpc-message`` encoding: printable ASCII except ``%`` as is, the rest ``%XX``."""
    out = bytearray()
    for byte in text.encode("utf-8", "replace"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def error_headers(
    status: int,
    cause: str,
    detail: str,
    *,
    request_id: bytes | None,
    grpc: bool,
    extra: tuple[Header, ...] = (),
) -> list[Header]:
    """The header block of a response the proxy generates, naming the cause.

    For gRPC calls it is a trailers-only response carrying ``grpc-status`` (the spec's mapping
    of ``status``) and ``grpc-message``, which gRPC clients prefer over the HTTP status.
    """
    headers: list[Header] = [(b":status", b"%d" % status)]
    if grpc:
        headers.append((b"content-type", b"application/grpc"))
        headers.append((b"grpc-status", b"%d" % grpc_code_for_http(status)))
        message = f"{cause}: {detail}" if detail else cause
        headers.append((b"grpc-message", percent_encode(message)))
    else:
        headers.append((b"content-type", b"text/plain; charset=utf-8"))
    headers.append((b"x-gossamer-error", cause.encode("ascii")))
    if request_id:
        headers.append((b"x-request-id", request_id))
    headers.extend(extra)
    return headers


def error_body(status: int, cause: str, detail: str) -> bytes:
    """The plain-text body of a generated (non-gRPC) error response."""
    return f"{status} {cause}{': ' + detail if detail else ''}\n".encode("utf-8", "replace")
