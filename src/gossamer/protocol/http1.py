"""Sans-IO HTTP/1.1 rules the proxy applies to messages it forwards.

This module owns: which headers are hop-by-hop, how a forwarded header block is written (one
join), how a request target in absolute form becomes origin form, chunk framing, and the bytes
of responses the proxy generates itself (always with an ``x-gossamer-error`` header). It does
no I/O and never awaits.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from http import HTTPStatus

__all__ = [
    "HOP_BY_HOP",
    "LAST_CHUNK",
    "HeadScan",
    "ProxyError",
    "check_request_head",
    "connect_target",
    "encode_chunk",
    "error_response",
    "parse_error",
    "redirect_response",
    "render_headers",
    "same_authority",
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
        "hosts",
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
        self.hosts = 0  # how many Host fields (a request with more than one is refused)
        self.request_id: bytes | None = None
        # Every Transfer-Encoding line's value, joined as one list (RFC 9110 5.3), so codings
        # before chunked survive and a request's framing is judged on all of them.
        self.transfer_encoding = b""
        self.upgrade = b""
        self.chunked = False


# What the proxy does with a header, by name. Unknown names are kept (action 0).
_KEEP, _DROP, _CONNECTION, _TE, _UPGRADE, _HOST, _LENGTH, _REQUEST_ID = range(8)
_SPECIAL: dict[bytes, int] = {
    **{name: _DROP for name in HOP_BY_HOP},
    b"connection": _CONNECTION,
    b"transfer-encoding": _TE,
    b"upgrade": _UPGRADE,
    b"host": _HOST,
    b"content-length": _LENGTH,
    b"x-request-id": _REQUEST_ID,
}
# Common spellings of common headers, so most lookups need no lower-casing.
_COMMON_KEPT = (
    b"accept", b"accept-encoding", b"accept-language", b"user-agent", b"cache-control",
    b"content-type", b"content-encoding", b"date", b"server", b"etag", b"last-modified",
    b"vary", b"cookie", b"set-cookie", b"authorization", b"location", b"expires",
    b"accept-ranges", b"referer", b"origin", b"traceparent", b"x-forwarded-for",
)  # fmt: skip
_TABLES: dict[frozenset[bytes], dict[bytes, int]] = {}


def _table(drop: frozenset[bytes]) -> dict[bytes, int]:
    table = _TABLES.get(drop)
    if table is None:
        actions = {name: _KEEP for name in _COMMON_KEPT}
        actions.update(_SPECIAL)
        actions.update({name: _DROP for name in drop if name not in _SPECIAL})
        table = {}
        for name, action in actions.items():
            for spelling in (name, name.title(), name.upper()):
                table[spelling] = action
        _TABLES[drop] = table
    return table


def scan_headers(headers: Iterable[Header], drop: frozenset[bytes] = frozenset()) -> HeadScan:
    """Split headers into the forwardable ones and the values the proxy acts on."""
    scan = HeadScan()
    kept = scan.kept
    table = _table(drop)
    get = table.get
    for pair in headers:
        name = pair[0]
        action = get(name)
        if action is None:
            action = get(name.lower(), _KEEP)
        if action == _KEEP:
            kept.append(pair)
        elif action == _DROP:
            continue
        elif action == _HOST:
            scan.host = pair[1]
            scan.hosts += 1
            kept.append(pair)
        elif action == _LENGTH:
            scan.content_length = pair[1]
            kept.append(pair)
        elif action == _REQUEST_ID:
            scan.request_id = pair[1]
            kept.append(pair)
        elif action == _CONNECTION:
            previous = scan.connection
            scan.connection = pair[1] if previous is None else previous + b"," + pair[1]
        elif action == _TE:
            previous = scan.transfer_encoding
            value = pair[1] if not previous else previous + b", " + pair[1]
            scan.transfer_encoding = value
            scan.chunked = value.rpartition(b",")[2].strip().lower() == b"chunked"
        else:  # _UPGRADE
            scan.upgrade = pair[1]
    if scan.connection is not None:
        named = {token.strip().lower() for token in scan.connection.split(b",")}
        named -= {b"close", b"keep-alive", b""}
        if named:
            scan.kept = [(n, v) for n, v in kept if n.lower() not in named]
    return scan


def check_request_head(scan: HeadScan, target: bytes, http10: bool) -> None:
    """Refuse (``ProxyError`` 400 ``bad-request``) a request head whose framing or destination
    two parsers could read differently, before any of it is forwarded:

    - more than one Host (which one would route? RFC 9112 3.2);
    - Transfer-Encoding in HTTP/1.0, which has no chunked framing (RFC 9112 6.1);
    - a Transfer-Encoding other than exactly one ``chunked`` (any case; its lines taken
      together, so two lines are two codings): the proxy frames request bodies by chunks
      only, and a server that reads ``identity, chunked``, ``gzip, chunked``, ``, chunked``
      or two lines otherwise would not end the body where the proxy did (HAProxy answers
      these 422, nginx 501);
    - an absolute-form target whose authority is not the Host it came with (the proxy would
      route by one and the app might by the other; HAProxy refuses it too).
    """
    if scan.hosts > 1:
        raise ProxyError(400, "bad-request", "more than one Host header")
    if scan.transfer_encoding:
        if http10:
            raise ProxyError(400, "bad-request", "Transfer-Encoding in an HTTP/1.0 request")
        codings = [c.strip(b" \t").lower() for c in scan.transfer_encoding.split(b",")]
        if codings != [b"chunked"]:
            raise ProxyError(400, "bad-request", "a Transfer-Encoding other than chunked")
    if target[:1] != b"/" and scan.host is not None:
        scheme = target[:8].lower()
        if scheme.startswith((b"http://", b"https://")):
            rest = target[target.find(b"//") + 2 :]
            end = len(rest)
            for delimiter in (b"/", b"?", b"#"):
                i = rest.find(delimiter)
                if 0 <= i < end:
                    end = i
            authority = rest[:end].rpartition(b"@")[2]
            default = b":443" if scheme.startswith(b"https") else b":80"
            if not same_authority(authority, scan.host, default):
                raise ProxyError(
                    400, "bad-request", "Host differs from the authority of the request target"
                )


def same_authority(a: bytes, b: bytes, default_port: bytes = b":80") -> bool:
    """Whether two authorities (``host[:port]``) name the same place: case-insensitive, the
    scheme's default port the same as none."""
    a, b = a.strip().lower(), b.strip().lower()
    if a.endswith(default_port):
        a = a[: -len(default_port)]
    if b.endswith(default_port):
        b = b[: -len(default_port)]
    return a == b


def parse_error(detail: str) -> ProxyError:
    """The answer to a request llhttp could not parse: 505 only for a request line whose
    version is well formed but not one llhttp knows (``Invalid HTTP version``: HTTP/1.2,
    HTTP/3.0); any other error, including llhttp's ``Expected CRLF after version`` for a
    bare CR or LF ending the request line, is a malformed request: 400."""
    if detail.startswith("Invalid HTTP version"):
        return ProxyError(505, "http-version-not-supported", detail)
    return ProxyError(400, "bad-request", detail)


def render_headers(headers: Iterable[Header]) -> bytes:
    """Header lines, each ending in CRLF, in one join."""
    return b"".join([b"%b: %b\r\n" % pair for pair in headers])


_HOST_NAME = re.compile(rb"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})")


def connect_target(target: bytes) -> tuple[str, int]:
    """The ``(host, port)`` of a CONNECT request's authority-form target (RFC 9110 9.3.6:
    ``host:port``, the port required; an IPv6 address in brackets), lower-cased; ``ProxyError``
    400 for anything else (a path, userinfo, a missing or out-of-range port)."""
    host, sep, port_text = target.rpartition(b":")
    if not sep or not port_text.isdigit() or len(port_text) > 5:
        raise ProxyError(400, "bad-request", "a CONNECT target is host:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ProxyError(400, "bad-request", f"CONNECT port out of range: {port}")
    if host.startswith(b"[") and host.endswith(b"]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1].decode("ascii"))), port
        except (ValueError, UnicodeDecodeError):
            raise ProxyError(400, "bad-request", "a CONNECT target's IPv6 address") from None
    if not _HOST_NAME.fullmatch(host):
        raise ProxyError(400, "bad-request", "a CONNECT target's host is a name or an address")
    return host.decode("ascii").lower().rstrip("."), port


def split_absolute_target(target: bytes) -> tuple[bytes | None, bytes]:
    """Turn ``http://host[:port]/path?q`` into (``host[:port]``, ``/path?q``).

    Origin-form targets come back as (None, target). Only ``http`` is accepted in absolute
    form; the proxy speaks plaintext to the app and originates TLS itself.
    """
    if target[:1] == b"/":
        return None, target
    scheme = target[:8].lower()
    if scheme == b"https://":
        raise ProxyError(
            400, "bad-request", "an https:// URL goes through a CONNECT tunnel (https_proxy)"
        )
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


def redirect_response(status: int, location: bytes, request_id: bytes | None = None) -> bytes:
    """A whole redirect a route is configured to give (no body, no ``x-gossamer-error``:
    configured behaviour, not an error)."""
    lines = [
        b"HTTP/1.1 %d %b" % (status, _reason(status)),
        b"location: " + location,
        b"content-length: 0",
    ]
    if request_id:
        lines.append(b"x-request-id: " + request_id)
    return b"\r\n".join(lines) + b"\r\n\r\n"
