"""Scanning whole plain HTTP/1.1 messages (see ``gossamer.protocol.plain``), natively or not.

``new_scanner()`` gives one scanner per connection. ``NativeScanner`` makes one C call per
message (``gossamer.protocol.native``: a strict single pass that accepts a subset of what
``PythonScanner`` accepts); ``PythonScanner`` checks the message with llhttp and finds the
headers the proxy acts on with a regular expression. Both return the same pieces for a
message they both take (a property test holds them to it); a message a scanner declines
goes to the full parser, which has not been fed and so starts from the same boundary.
``HOW`` says which is in use: "extension" (the C file built as a CPython extension, called
directly), "library" (the shared object, called through libffi) or "python".
``GOSSAMER_HTTP1_NATIVE=off`` (or no compiler at build time) selects the Python scanner.
No I/O here beyond loading the library.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from gossamer.native import declared_ffi, load_extension, open_library
from gossamer.protocol import native
from gossamer.protocol.plain import (
    MAX_PLAIN_HEAD,
    RequestFrame,
    ResponseFrame,
    plain_request_head,
    plain_response_head,
)

__all__ = [
    "HOW",
    "NativeScanner",
    "PlainRequest",
    "PlainResponse",
    "PythonScanner",
    "Scanner",
    "new_scanner",
]

# (method, target, head without hop-by-hop lines and final CRLF CRLF, Host value,
#  X-Request-Id value, keep-alive, first Traceparent value, whether a B3 header came)
PlainRequest = tuple[
    bytes, bytes, bytes, bytes | None, bytes | None, bool, bytes | None, bool, bytes | None
]
# (status, the bytes to forward: head without the Connection line, and the body; keep-alive)
PlainResponse = tuple[int, bytes, bool]


_METHOD = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a token (RFC 9110 5.6.2)


class PythonScanner:
    """llhttp without per-header callbacks, and a regular expression over the head."""

    __slots__ = ("_request_frame", "_response_frame")

    def __init__(self) -> None:
        self._request_frame: RequestFrame | None = None
        self._response_frame: ResponseFrame | None = None

    def request(
        self, data: bytes, want_host: bool, want_user_agent: bool = True
    ) -> PlainRequest | None:
        """The pieces of ``data`` when it is one whole bodyless plain request; else None.
        The Host value is reported whatever ``want_host`` says, as the native scanner does:
        the connection sets the authority from it, which must not depend on the scanner.
        The User-Agent value only when ``want_user_agent`` (an access log writes it): else
        None, and the request pays no slice for it."""
        end = data.find(b"\r\n\r\n")
        if end != len(data) - 4 or end > MAX_PLAIN_HEAD:
            return None
        space = data.find(b" ")
        line_end = data.find(b"\r\n")
        if not data.startswith(b"/", space + 1) or not data.endswith(b" HTTP/1.1", 0, line_end):
            return None  # absolute-form, asterisk-form, HTTP/1.0: the full path
        target = data[space + 1 : line_end - 9]
        if b" " in target or data.find(b"\n", 0, line_end) >= 0:
            # A bare LF in the request line: llhttp reads an HTTP/0.9 request ending there
            # (and ignores the rest), not the HTTP/1.1 line this scanner would forward. A
            # second space: llhttp's target ends at the first one, this slice would not.
            return None
        plain = plain_request_head(data[:end], want_host=True)
        if plain is None:
            return None
        frame = self._request_frame
        if frame is None:
            frame = self._request_frame = RequestFrame()
        if not frame.feed(data):
            return None
        method = data[:space]
        if method == b"CONNECT" or not _METHOD.fullmatch(method):
            return None  # (llhttp skips CR and LF before a request line: the full path)
        head, host, request_id, traceparent, b3, user_agent = plain
        return (method, target, head, host, request_id, frame.keep_alive, traceparent, b3,
                user_agent if want_user_agent else None)  # fmt: skip

    def response(self, data: bytes) -> PlainResponse | None:
        """The pieces of ``data`` when it is one whole plain final response; else None."""
        end = data.find(b"\r\n\r\n")
        if end < 0 or end > MAX_PLAIN_HEAD:
            return None
        head = plain_response_head(data[:end])
        if head is None:
            return None
        frame = self._response_frame
        if frame is None:
            frame = self._response_frame = ResponseFrame()
        if not frame.feed(data):
            return None
        status = frame.status()
        if status < 200:
            return None  # an interim response alone: the full parser handles 1xx
        return status, head + data[end:] if len(head) != end else data, frame.keep_alive

    def close(self) -> None:
        """Let the frames' parsers go (each refers back to its frame: a reference cycle)."""
        for frame in (self._request_frame, self._response_frame):
            if frame is not None:
                frame.close()
        self._request_frame = self._response_frame = None



def _load() -> tuple[Any, Any, str]:
    """``(ffi, lib, how)``: the extension when built, else the shared object through libffi;
    ``lib`` is None when neither is there (or ``GOSSAMER_HTTP1_NATIVE=off``)."""
    extension = load_extension(native.PART)
    if extension is not None:
        return extension[0], extension[1], "extension"
    ffi, _ = declared_ffi(native.PART)
    lib = open_library(native.PART, ffi)
    return ffi, lib, "library" if lib is not None else "python"


_ffi, _lib, HOW = _load()
_RESULTS = struct.Struct(f"={native.B3 + 1}I")  # what every request needs
_USER_AGENT = struct.Struct("=2I")  # read only when asked for (an access log writes it)
_RESPONSE_RESULTS = struct.Struct(f"={native.CUT1_END + 1}I")  # what a response needs


class NativeScanner:
    """One call into ``scan.c`` per message; its results land in a buffer this scanner owns
    (one per connection: connections on other threads' loops must not share it)."""

    __slots__ = ("_buffer", "_results")

    def __init__(self) -> None:
        self._buffer = bytearray(native.RESULT_COUNT * 4)
        self._results = _ffi.from_buffer("uint32_t[]", self._buffer)

    def request(
        self, data: bytes, want_host: bool, want_user_agent: bool = True
    ) -> PlainRequest | None:
        if not _lib.gossamer_plain_request(data, len(data), self._results):
            return None
        end, keep, method_end, target_end, c1s, c1e, c2s, c2e, hs, he, rs, re_, ts, te, b3 = (
            _RESULTS.unpack_from(self._buffer)
        )
        user_agent = None
        if want_user_agent:
            us, ue = _USER_AGENT.unpack_from(self._buffer, native.USER_AGENT_START * 4)
            if ue:
                user_agent = data[us:ue]
        if c2e:
            head = data[:c1s] + data[c1e:c2s] + data[c2e:end]
        elif c1e:
            head = data[:c1s] + data[c1e:end]
        else:
            head = data[:end]
        return (
            data[:method_end],
            data[method_end + 1 : target_end],
            head,
            data[hs:he] if he else None,
            data[rs:re_] if re_ else None,
            keep == 1,
            data[ts:te] if te else None,
            b3 == 1,
            user_agent,
        )

    def response(self, data: bytes) -> PlainResponse | None:
        if not _lib.gossamer_plain_response(data, len(data), self._results):
            return None
        _end, keep, status, _, c1s, c1e = _RESPONSE_RESULTS.unpack_from(self._buffer)
        return status, data[:c1s] + data[c1e:] if c1e else data, keep == 1

    def close(self) -> None:
        pass


Scanner = NativeScanner | PythonScanner


def new_scanner() -> Scanner:
    """A scanner for one connection: the native one when its library is built and on."""
    return NativeScanner() if _lib is not None else PythonScanner()
