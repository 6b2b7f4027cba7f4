"""Plain HTTP/1.1 messages: the common shape the proxy forwards by slicing bytes.

Most requests and responses crossing a sidecar are one whole message in one read, with no
hop-by-hop header but ``Connection: keep-alive``/``close``, and (for requests) no body. For
those the proxy need not build a header list and render it again: it cuts the hop-by-hop lines
out and forwards the rest as received. This module is the Python way to find them (the native
scanner in ``gossamer.protocol.native`` does the same in one C pass; ``gossamer.protocol.
scanner`` picks one): it checks the message with llhttp (``MessageFrame``: a parser with no
per-header callbacks, which validates exactly as the full parser does) and finds the few
headers it acts on with one regular expression over the head (``plain_request_head``,
``plain_response_head``). Anything else (bodies in requests, chunked framing, upgrades, other
hop-by-hop headers, a partial message, an error) is left to the full parser, which was not fed
and so starts from the same message boundary. No I/O here.

A head, in this module, is the bytes before the blank line: the start line and each header
line, without the final CRLF CRLF. The proxy's own lines are added as ``\\r\\nname: value``.
"""

from __future__ import annotations

import re
from typing import cast

import httptools

__all__ = [
    "MAX_PLAIN_HEAD",
    "MessageFrame",
    "PlainHead",
    "RequestFrame",
    "ResponseFrame",
    "header_pairs",
    "plain_request_head",
    "plain_response_head",
]

# A longer head takes the full path, which enforces the URI and header-block limits precisely.
MAX_PLAIN_HEAD = 8192

# Header names the proxy acts on, found in the lower-cased head: the hop-by-hop ones (``proxy-``
# catches Proxy-Connection and Proxy-Authorization/-Authenticate, and harmlessly others) and,
# in requests, body framing, the request id, the peer identity (only the proxy sets it), Host
# and the trace headers.
_HOP = rb"connection:|keep-alive:|proxy-|te:|trailer:|transfer-encoding:|upgrade:"
_RESPONSE_SPECIAL = re.compile(rb"\r\n(?:" + _HOP + rb")")
_REQUEST_NAMES = _HOP + rb"|content-length:|x-request-id:|x-gossamer-peer-identity:"
# What tracing looks at first (docs/internals.md §13) and the access log's user agent,
# reported so they need no second search.
_TRACE = rb"|traceparent:|b3:|x-b3-traceid:|x-b3-sampled:|x-b3-flags:|user-agent:"
_REQUEST_SPECIAL_HOST = re.compile(rb"\r\n(" + _REQUEST_NAMES + _TRACE + rb"|host:)")
_CONNECTION_PLAIN = frozenset({b"keep-alive", b"close"})
# The names whose first value a plain request's scan reports; of these, a repeated Host or
# X-Request-Id sends the request to the full path.
_REPORTED = frozenset({b"host:", b"x-request-id:", b"traceparent:", b"user-agent:"})
_ONCE = frozenset({b"host:", b"x-request-id:"})


class MessageFrame:
    """An llhttp parser that only reports where messages end (and, for responses, begin).

    ``feed`` returns True when ``data`` held exactly one whole, valid message; ``keep_alive``
    is then what the message said about the connection. After a False the parser is
    replaced, so a later message starts clean. Use ``RequestFrame`` or ``ResponseFrame``.
    """

    __slots__ = ("begun", "done", "keep_alive", "parser")
    __deletable__ = ("parser",)  # dropped by close

    def __init__(self) -> None:
        self.begun = 0
        self.done = 0
        self.keep_alive = True
        self.parser = self._new_parser()

    def _new_parser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        raise TypeError("subclass responsibility")

    def feed(self, data: bytes) -> bool:
        self.begun = self.done = 0
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # An upgrade (CONNECT, a 101) is the full parser's to handle, like any error.
            self.parser = self._new_parser()
            return False
        if self.done == 1 and self.begun <= 1:
            return True
        self.parser = self._new_parser()
        return False

    def close(self) -> None:
        """Let the parser go (it calls back into this frame, and so refers to it): without
        this the two wait for the cyclic GC. The frame is not fed after this."""
        del self.parser

    def on_message_complete(self) -> None:  # llhttp callback
        self.done += 1
        # Read here: llhttp clears the connection flags once the message is complete.
        self.keep_alive = self.parser.should_keep_alive()


class RequestFrame(MessageFrame):
    """Frames a request head the caller has already found to end where ``data`` ends (a
    bodyless request cannot hold a second message then), so only the end is counted."""

    __slots__ = ()

    def _new_parser(self) -> httptools.HttpRequestParser:
        return httptools.HttpRequestParser(self)


class ResponseFrame(MessageFrame):
    """Frames a response with its body: bytes after it would begin a second message."""

    __slots__ = ()

    def _new_parser(self) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:  # llhttp callback
        self.begun += 1

    def status(self) -> int:
        """The status code of the response just fed."""
        return cast(httptools.HttpResponseParser, self.parser).get_status_code()


PlainHead = tuple[bytes, bytes | None, bytes | None, bytes | None, bool, bytes | None]


def plain_request_head(head: bytes, *, want_host: bool) -> PlainHead | None:
    """(head without hop-by-hop lines, Host value, X-Request-Id value, first Traceparent
    value, whether a B3 header tracing reads first came, first User-Agent value) for a
    bodyless request head the proxy may forward by slicing; None when the full path must
    take it.

    ``Connection: keep-alive``/``close`` and ``x-gossamer-peer-identity`` lines are cut. A
    body (``Content-Length``/``Transfer-Encoding``), an upgrade, any other hop-by-hop header,
    or a repeated Connection, Host or X-Request-Id sends the request to the full path (which
    refuses a repeated Host). ``want_host`` is kept for the native scanner's signature.
    """
    low = head.lower()
    # Host is always looked at: a repeated one goes to the full path (which refuses it),
    # as the native scanner does.
    found: dict[bytes, bytes] = {}  # the first value of each name in _REPORTED
    b3 = False
    connection = False
    pieces: list[bytes] | None = None
    last = 0
    for match in _REQUEST_SPECIAL_HOST.finditer(low):
        name = match.group(1)
        start = match.end()
        end = low.find(b"\r\n", start)
        if end < 0:
            end = len(low)
        if name in _REPORTED:
            if name not in found:
                found[name] = head[start:end].strip(b" \t")
            elif name in _ONCE:
                return None
            continue
        if name.startswith((b"b3", b"x-b3-")):
            b3 = True
            continue
        if name == b"connection:":
            if connection or low[start:end].strip(b" \t") not in _CONNECTION_PLAIN:
                return None
            connection = True
        elif name != b"x-gossamer-peer-identity:":
            return None  # a body, an upgrade or another hop-by-hop header
        if pieces is None:
            pieces = []
        pieces.append(head[last : match.start()])
        last = end
    if pieces is not None:
        pieces.append(head[last:])
        head = b"".join(pieces)
    host = found.get(b"host:") if want_host else None
    return (head, host, found.get(b"x-request-id:"), found.get(b"traceparent:"), b3,
            found.get(b"user-agent:"))  # fmt: skip


def plain_response_head(head: bytes) -> bytes | None:
    """The response head without its ``Connection: keep-alive``/``close`` line, or None when
    it has any other hop-by-hop header (chunked framing, upgrade, ...) or two Connection
    lines."""
    low = head.lower()
    match = _RESPONSE_SPECIAL.search(low)
    if match is None:
        return head
    i = match.start()
    if low[i + 2 : i + 13] != b"connection:":
        return None
    j = low.find(b"\r\n", i + 13)
    if j < 0:
        j = len(low)
    elif _RESPONSE_SPECIAL.search(low, j) is not None:
        return None
    if low[i + 13 : j].strip(b" \t") not in _CONNECTION_PLAIN:
        return None
    return head[:i] + head[j:]


def header_pairs(lines: bytes) -> list[tuple[bytes, bytes]]:
    """``(name, value)`` pairs of header lines as the plain path keeps them (each line starting
    with CRLF; values without surrounding whitespace), for code that needs the list."""
    pairs = []
    for line in lines.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            pairs.append((name, value.strip(b" \t")))
    return pairs
