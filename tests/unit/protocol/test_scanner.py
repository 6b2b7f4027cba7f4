"""The native plain-message scanner against the Python one (llhttp + regular expression).

Whatever the native scanner takes, the Python scanner takes too, with the same pieces (so the
full parser, llhttp, accepts it and frames it the same way). On messages inside the strict
grammar ``scan.c`` documents, both take exactly the same ones. Mutated messages (a byte
changed, inserted or removed) check the first property where the grammar ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer.build_native import extension_path
from gossamer.native import declared_ffi, load_extension, open_library
from gossamer.protocol import native, scanner
from gossamer.protocol.scanner import NativeScanner, PythonScanner
from tests.tools import require

pytestmark = pytest.mark.usefixtures("native_build")


@pytest.fixture(params=["extension", "library"], scope="module")
def native_build(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test runs on both builds of ``scan.c``: the CPython extension (called directly)
    and the shared object (called through libffi). ``make`` builds both."""
    if request.param == "extension":
        loaded = load_extension(native.PART)
        require(loaded is not None, "the scanner's CPython extension (make builds it)")
        assert loaded is not None
        ffi, lib = loaded
    else:
        ffi = declared_ffi(native.PART)[0]
        lib = open_library(native.PART, ffi)
        require(lib is not None, "the scanner's shared object (make builds it)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scanner, "_ffi", ffi)
        patch.setattr(scanner, "_lib", lib)
        yield str(request.param)


_TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
_TARGET = "abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?%"
_VALUE = "".join(chr(c) for c in range(0x21, 0x7F)) + " \t"
_NAMES = [
    "Host", "Accept", "User-Agent", "X-Request-Id", "Connection", "X-Gossamer-Peer-Identity",
    "Keep-Alive", "Upgrade", "TE", "Trailer", "Proxy-Authorization", "Transfer-Encoding",
    "Content-Length", "Tea", "Hosting", "Connections", "X-Request-Ids", "Server", "Date",
    "traceparent", "TraceParent", "tracestate", "b3", "B3s", "X-B3-TraceId", "x-b3-sampled",
    "X-B3-Flags", "X-B3-SpanId", "X-B3-Sampledd", "User-Agents",
]  # fmt: skip
_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"]


def _cased(name: str, flips: int) -> str:
    return "".join(c.swapcase() if (flips >> (i % 16)) & 1 else c for i, c in enumerate(name))


names = st.one_of(
    st.builds(_cased, st.sampled_from(_NAMES), st.integers(0, 0xFFFF)),
    st.text(_TOKEN, min_size=1, max_size=12),
)
values = st.one_of(
    st.sampled_from(["keep-alive", "close", "Keep-Alive", "CLOSE", "5", "0", "chunked", ""]),
    st.text(_VALUE, max_size=20).map(lambda v: v.strip(" \t")),
)
blanks = st.sampled_from(["", " ", "  ", "\t", " \t"])
header_lines = st.lists(
    st.builds(lambda n, b1, v, b2: f"{n}:{b1}{v}{b2}\r\n", names, blanks, values, blanks),
    max_size=8,
).map("".join)


@st.composite
def requests(draw: Any) -> bytes:
    method = draw(st.sampled_from(_METHODS))
    target = "/" + draw(st.text(_TARGET, max_size=30))
    return f"{method} {target} HTTP/1.1\r\n{draw(header_lines)}\r\n".encode()


@st.composite
def responses(draw: Any) -> bytes:
    status = draw(st.sampled_from([100, 101, 200, 201, 204, 301, 304, 404, 500, 503, 599]))
    reason = draw(st.text(_VALUE, max_size=12))
    body = draw(st.binary(max_size=40))
    length = draw(st.sampled_from(["right", "none", "short", "long", "twice"]))
    lines = draw(header_lines)
    framing = {
        "right": f"Content-Length: {len(body)}\r\n",
        "none": "",
        "short": f"content-length: {max(len(body) - 1, 0)}\r\n",
        "long": f"CONTENT-LENGTH: {len(body) + 1}\r\n",
        "twice": f"Content-Length: {len(body)}\r\nContent-Length: {len(body)}\r\n",
    }[length]
    head = f"HTTP/1.1 {status} {reason}\r\n{lines}{framing}\r\n".encode()
    return head + body


def _mutated(data: bytes, position: int, byte: int, how: int) -> bytes:
    i = position % (len(data) + 1)
    if how == 0:
        return data[:i] + bytes([byte]) + data[i + 1 :]
    if how == 1:
        return data[:i] + bytes([byte]) + data[i:]
    return data[:i] + data[i + 1 :]


def _both_requests(data: bytes) -> tuple[Any, Any]:
    native = NativeScanner().request(data, True)
    python = PythonScanner().request(data, True)
    return native, python


def _special_counts(data: bytes) -> dict[bytes, int]:
    lines = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    counts: dict[bytes, int] = {}
    for line in lines:
        name = line.partition(b":")[0].lower()
        counts[name] = counts.get(name, 0) + 1
    return counts


@settings(max_examples=1500, deadline=None)
@given(data=requests())
def test_requests_in_the_grammar_are_taken_alike(data: bytes) -> None:
    native, python = _both_requests(data)
    if native is not None:
        assert native == python
        return
    # The native scanner is stricter only where scan.c says so: a repeated Host, or more
    # than two lines to cut.
    counts = _special_counts(data)
    cuts = counts.get(b"connection", 0) + counts.get(b"x-gossamer-peer-identity", 0)
    assert python is None or counts.get(b"host", 0) > 1 or cuts > 2, data


@settings(max_examples=1500, deadline=None)
@given(data=responses())
def test_responses_in_the_grammar_are_taken_alike(data: bytes) -> None:
    native = NativeScanner().response(data)
    python = PythonScanner().response(data)
    if native is not None:
        assert native == python
        return
    # The native scanner takes only Content-Length framing (none for 204 and 304) and exactly
    # the body; llhttp also lets stray CR/LF after a message pass as the gap before the next.
    counts = _special_counts(data)
    assert (
        python is None
        or (b"content-length" in counts and data[9:12] in (b"204", b"304"))
        or data.endswith((b"\r", b"\n"))
    ), data


@settings(max_examples=1500, deadline=None)
@given(
    data=st.one_of(requests(), responses()),
    position=st.integers(0, 1 << 16),
    byte=st.sampled_from([0, 9, 10, 13, 32, 58, 127, 128, 255, *b"Hx/%:"]),
    how=st.integers(0, 2),
)
def test_mutated_messages_the_native_scanner_takes_llhttp_takes_alike(
    data: bytes, position: int, byte: int, how: int
) -> None:
    data = _mutated(data, position, byte, how)
    native_request, python_request = _both_requests(data)
    if native_request is not None:
        assert native_request == python_request, data
    native_response = NativeScanner().response(data)
    if native_response is not None:
        assert native_response == PythonScanner().response(data), data


def test_common_messages_are_taken_natively() -> None:
    """What wrk, curl, nginx and most apps send takes the native path."""
    taken = NativeScanner()
    assert taken.request(b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n", True) == (
        b"GET", b"/", b"GET / HTTP/1.1\r\nHost: edge", b"edge", None, True, None, False, None
    )  # fmt: skip
    curl = (
        b"GET /items?id=7 HTTP/1.1\r\nHost: catalog:8080\r\nUser-Agent: curl/7.88.1\r\n"
        b"Accept: */*\r\nConnection: close\r\nX-Request-Id: abc-1\r\n\r\n"
    )
    assert taken.request(curl, True) == (
        b"GET",
        b"/items?id=7",
        b"GET /items?id=7 HTTP/1.1\r\nHost: catalog:8080\r\nUser-Agent: curl/7.88.1\r\n"
        b"Accept: */*\r\nX-Request-Id: abc-1",
        b"catalog:8080",
        b"abc-1",
        False,
        None,
        False,
        b"curl/7.88.1",
    )
    nginx = (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 22:00:00 GMT\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: 3\r\n"
        b"Connection: keep-alive\r\nETag: \"x\"\r\n\r\nabc"
    )
    assert taken.response(nginx) == (200, nginx.replace(b"\r\nConnection: keep-alive", b""), True)
    assert taken.response(b"HTTP/1.1 204 No Content\r\n\r\n") == (
        204, b"HTTP/1.1 204 No Content\r\n\r\n", True
    )  # fmt: skip


def test_the_trace_headers_tracing_reads_first_are_reported() -> None:
    """The first Traceparent value (blanks around it cut) and whether any B3 header tracing
    reads first came: found by the scan, so tracing searches the head no more."""
    parent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    data = b"GET / HTTP/1.1\r\nHost: a\r\nTraceParent:  %b \r\ntraceparent: x\r\n\r\n" % parent
    for taker in (NativeScanner(), PythonScanner()):
        taken = taker.request(data, True)
        assert taken is not None and taken[6:] == (parent, False, None)
        for b3 in (b"B3: 1", b"X-B3-TraceId: 1", b"x-b3-sampled: 0", b"X-B3-FLAGS: 1"):
            taken = taker.request(b"GET / HTTP/1.1\r\n%b\r\n\r\n" % b3, True)
            assert taken is not None and taken[6:] == (None, True, None), b3
        for other in (b"X-B3-SpanId: 1", b"b3s: 1", b"tracestate: a=1", b"user-agents: x"):
            taken = taker.request(b"GET / HTTP/1.1\r\n%b\r\n\r\n" % other, True)
            assert taken is not None and taken[6:] == (None, False, None), other


def test_the_user_agent_the_access_log_writes_is_reported() -> None:
    """The first User-Agent value (blanks around it cut), any case: found by the scan, so
    the access log searches the head no more."""
    data = b"GET / HTTP/1.1\r\nHost: a\r\nUSER-agent:  curl/8.1 \r\nUser-Agent: second\r\n\r\n"
    for taker in (NativeScanner(), PythonScanner()):
        taken = taker.request(data, True)
        assert taken is not None and taken[8] == b"curl/8.1", taker
        taken = taker.request(b"GET / HTTP/1.1\r\nUser-Agent:\r\n\r\n", True)
        assert taken is not None and taken[8] == b"", taker


@pytest.mark.parametrize(
    "data",
    [
        b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",  # absolute form
        b"GET / HTTP/1.0\r\n\r\n",
        b"FOO / HTTP/1.1\r\n\r\n",  # a method llhttp refuses
        b"CONNECT x:443 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n",  # obs-text
        b"GET / HTTP/1.1\r\nX : y\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n\r\n",  # pipelined
        b"GET / HTTP/1.1\r\nHost: a\r\n",  # partial
    ],
)
def test_requests_outside_the_grammar_go_to_the_full_parser(data: bytes) -> None:
    assert NativeScanner().request(data, True) is None


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nuntil close",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",  # partial body
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nabHTTP/1.1",  # more than one message
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    ],
)
def test_responses_outside_the_grammar_go_to_the_full_parser(data: bytes) -> None:
    assert NativeScanner().response(data) is None


def _how(**env: str) -> str:
    code = "from gossamer.protocol import scanner; print(scanner.HOW)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return done.stdout.strip()


def test_the_extension_is_preferred_and_the_switch_turns_native_off() -> None:
    built = extension_path(native.PART).exists()
    require(built, "the scanner's CPython extension (make builds it)")
    assert _how() == "extension"
    assert _how(GOSSAMER_HTTP1_NATIVE="off") == "python"
