"""Sans-IO header rules for HTTP/2 and gRPC messages the proxy forwards or generates.

This module owns: which request fields the proxy reads (``:method``, ``:authority``/``host``,
``x-request-id``, gRPC content type) in one pass while building the forwarded list; the header
blocks of responses the proxy generates itself (``x-gossamer-error`` always, and for gRPC
calls ``grpc-status``/``grpc-message`` so gRPC clients see the cause; redirects); reading
``grpc-status`` from trailers; the HTTP-status-to-gRPC-code mapping of the gRPC spec (a
timeout the proxy enforces is ``DEADLINE_EXCEEDED``); the gRPC-code-to-HTTP-status mapping
outlier detection classifies gRPC outcomes by (Envoy's); and what a route's header edits may
not add to an HTTP/2 request (connection-specific fields). No I/O.

Header names arrive lowercase: nghttp2 refuses uppercase names and connection-specific fields
in HTTP/2, so there is nothing hop-by-hop left to strip here.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "GRPC_CANCELLED",
    "GRPC_DEADLINE_EXCEEDED",
    "RequestScan",
    "error_body",
    "error_headers",
    "grpc_code_for_error",
    "grpc_code_for_http",
    "grpc_status_of",
    "http_status_for_grpc",
    "percent_encode",
    "pseudo_fields",
    "redirect_headers",
    "replace_path",
    "scan_request",
    "strip_connection_fields",
]

Header = tuple[bytes, bytes]

GRPC_CANCELLED = 1
GRPC_DEADLINE_EXCEEDED = 4
_GRPC_CONTENT_TYPE = b"application/grpc"

# https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md
_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
# gRPC code → the HTTP status it stands for, as Envoy maps it for outlier detection and stats:
# UNAVAILABLE is a 503 and DEADLINE_EXCEEDED a 504 (gateway errors); UNKNOWN, INTERNAL and
# DATA_LOSS are 500s, UNIMPLEMENTED a 501; client-side codes are 4xx (not server failures).
_GRPC_TO_HTTP = {0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
                 9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401}  # fmt: skip
# Fields HTTP/2 forbids (RFC 9113 8.2.2); a route's header edits must not put them on a request.
_CONNECTION_FIELDS = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


class RequestScan:
    """What one pass over a request's header block found, and the list to forward."""

    __slots__ = ("authority", "grpc", "kept", "method", "path", "request_id", "scheme")

    def __init__(self) -> None:
        self.kept: list[Header] = []
        self.method = b""
        self.path = b""
        self.scheme = b"http"
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
            elif name == b":path":
                scan.path = pair[1]
            elif name == b":scheme":
                scan.scheme = pair[1]
        elif name == b"content-type":
            scan.grpc = pair[1].startswith(_GRPC_CONTENT_TYPE)
        elif name == b"x-request-id":
            scan.request_id = pair[1]
        elif name == b"host":
            host = pair[1]
            if scan.authority and host.lower() != scan.authority.lower():
                # A Host naming another destination than the :authority routed on (RFC 9113
                # 8.3.1): the app must not see two. Pseudo-fields come first (nghttp2 checks),
                # so :authority is known here; HAProxy likewise sets Host from :authority.
                kept.pop()
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


def grpc_code_for_error(status: int, cause: str) -> int:
    """The ``grpc-status`` of a response the proxy generates: a deadline the proxy enforced
    (``upstream-timeout``) is DEADLINE_EXCEEDED, anything else follows the HTTP status."""
    if cause == "upstream-timeout":
        return GRPC_DEADLINE_EXCEEDED
    return _HTTP_TO_GRPC.get(status, 2)


def http_status_for_grpc(code: int) -> int:
    """The HTTP status a gRPC code stands for (500 for codes outside the spec)."""
    return _GRPC_TO_HTTP.get(code, 500)


def pseudo_fields(headers: Iterable[Header]) -> tuple[bytes, bytes, bytes]:
    """``(:method, :path, :scheme)`` of a request header block (pseudo-fields come first)."""
    method = path = scheme = b""
    for name, value in headers:
        if name[:1] != b":":
            break
        if name == b":method":
            method = value
        elif name == b":path":
            path = value
        elif name == b":scheme":
            scheme = value
    return method, path, scheme


def replace_path(headers: list[Header], path: bytes) -> list[Header]:
    """The header block with ``:path`` set to ``path`` (a new list)."""
    return [(b":path", path) if name == b":path" else (name, value) for name, value in headers]


def strip_connection_fields(headers: list[Header]) -> list[Header]:
    """Drop fields HTTP/2 forbids (and ``te`` other than ``trailers``), in place."""
    headers[:] = [
        (name, value)
        for name, value in headers
        if name not in _CONNECTION_FIELDS and (name != b"te" or value == b"trailers")
    ]
    return headers


def redirect_headers(status: int, location: bytes, request_id: bytes | None) -> list[Header]:
    """The header block of a redirect a route answers with (configured, not an error)."""
    headers: list[Header] = [(b":status", b"%d" % status), (b"location", location)]
    if request_id:
        headers.append((b"x-request-id", request_id))
    return headers


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

    For gRPC calls it is a trailers-only response carrying ``grpc-status``
    (``grpc_code_for_error``) and ``grpc-message``, which gRPC clients prefer over the HTTP
    status.
    """
    headers: list[Header] = [(b":status", b"%d" % status)]
    if grpc:
        headers.append((b"content-type", b"application/grpc"))
        headers.append((b"grpc-status", b"%d" % grpc_code_for_error(status, cause)))
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
