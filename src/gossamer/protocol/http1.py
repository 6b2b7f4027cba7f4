"""Sans-IO HTTP/1.1 rules the proxy applies to messages it forwards.

This module owns: which headers are hop-by-hop, how a forwarded header block is written (one
join), how a request target in absolute form becomes origin form, chunk framing, and the bytes
of responses the proxy generates itself (always with an ``x-gossamer-error`` header). It does
no I/O and never awaits.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus

__all__ = [
    "HOP_BY_HOP",
    "LAST_CHUNK",
    "HeadScan",
    "ProxyError",
    "encode_chunk",
    "error_response",
    "render_headers",
    "scan_headers",
    "split_absolute_target",
]

Header = tuple[bytes, bytes]

# RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones seen in the wild.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

LAST_CHUNK = b"0\r\n\r\n"


class ProxyError(Exception):
    """An error the proxy answers itself: a status and a cause for ``x-gossamer-error``.

    Causes name who is to blame: ``bad-request`` (the downstream), ``connect-failed`` and
    ``upstream-reset`` (the upstream), ``unknown-service`` and ``no-healthy-endpoints`` (the
    mesh's view of the destination).
    """

    def __init__(self, status: int, cause: str, detail: str = "") -> None:
        super().__init__(f"{status} {cause}: {detail}" if detail else f"{status} {cause}")
        self.status = status
        self.cause = cause
        self.detail = detail


class HeadScan:
    """What one pass over a message's header list found.

    ``kept`` is the forwardable list: hop-by-hop headers, the fields named in ``Connection`` and
    any names in the caller's ``drop`` set are gone. The other fields are the values the proxy
    itself acts on.
    """

    __slots__ = (
        "chunked",
        "connection",
        "content_length",
        "host",
        "kept",
        "request_id",
        "transfer_encoding",
        "upgrade",
    )

    def __init__(self) -> None:
        self.kept: list[Header] = []
        self.connection: bytes | None = None
        self.content_length: bytes | None = None
        self.host: bytes | None = None
        self.request_id: bytes | None = None
        self.transfer_encoding = b""  # the whole value, so codings before chunked survive
        self.upgrade = b""
        self.chunked = False


def scan_headers(headers: Iterable[Header], drop: frozenset[bytes] = frozenset()) -> HeadScan:
    """Split headers into the forwardable ones and the values the proxy acts on."""
    scan = HeadScan()
    kept = scan.kept
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP:
            if lower == b"connection":
                previous = scan.connection
                scan.connection = value if previous is None else previous + b"," + value
            elif lower == b"transfer-encoding":
                scan.transfer_encoding = value
                scan.chunked = value.rpartition(b",")[2].strip().lower() == b"chunked"
            elif lower == b"upgrade":
                scan.upgrade = value
            continue
        if lower in drop:
            continue
        if lower == b"host":
            scan.host = value
        elif lower == b"content-length":
            scan.content_length = value
        elif lower == b"x-request-id":
            scan.request_id = value
        kept.append((name, value))
    if scan.connection is not None:
        named = {token.strip().lower() for token in scan.connection.split(b",")}
        named -= {b"close", b"keep-alive", b""}
        if named:
            scan.kept = [(n, v) for n, v in kept if n.lower() not in named]
    return scan


def render_headers(headers: Iterable[Header]) -> bytes:
    """Header lines, each ending in CRLF, in one join."""
    return b"".join([b"%b: %b\r\n" % (name, value) for name, value in headers])


def split_absolute_target(target: bytes) -> tuple[bytes | None, bytes]:
    """Turn ``http://host[:port]/path?q`` into (``host[:port]``, ``/path?q``).

    Origin-form targets come back as (None, target). Only ``http`` is accepted in absolute
    form; the proxy speaks plaintext to the app and originates TLS itself.
    """
    if target[:1] == b"/":
        return None, target
    scheme = target[:8].lower()
    if scheme == b"https://":
        raise ProxyError(400, "bad-request", "https:// targets need CONNECT, not supported")
    if not scheme.startswith(b"http://"):
        return None, target
    rest = target[7:]
    end = len(rest)
    for delimiter in (b"/", b"?", b"#"):
        i = rest.find(delimiter)
        if 0 <= i < end:
            end = i
    authority = rest[:end].rpartition(b"@")[2]  # userinfo never leaves the proxy
    path = rest[end:]
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority, path


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


def error_response(
    status: int,
    cause: str,
    detail: str = "",
    *,
    request_id: bytes | None = None,
    close: bool = False,
    head_only: bool = False,
    headers: Iterable[Header] = (),
) -> bytes:
    """The full bytes of a response the proxy generates, naming the cause in a header."""
    body = f"{status} {cause}{': ' + detail if detail else ''}\n".encode("utf-8", "replace")
    lines = [
        b"HTTP/1.1 %d %b" % (status, _reason(status)),
        b"content-type: text/plain; charset=utf-8",
        b"content-length: %d" % len(body),
        b"x-gossamer-error: " + cause.encode("ascii"),
    ]
    if request_id:
        lines.append(b"x-request-id: " + request_id)
    lines.extend(b"%b: %b" % pair for pair in headers)
    if close:
        lines.append(b"connection: close")
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    return head if head_only else head + body
