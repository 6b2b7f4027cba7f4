"""Regressions found by the ``http1`` fuzz target (``fuzz/fuzz_http1.py``, docs/fuzzing.md):
messages the Python plain scanner took apart differently from the native scanner or from
llhttp, minimised.

Each runs against the Python scanner, and against the native one when it is built: whatever
one scanner takes, the other takes with the same pieces.
"""

from __future__ import annotations

import pytest

from gossamer.protocol import scanner
from gossamer.protocol.scanner import NativeScanner, PythonScanner

NATIVE = scanner._lib is not None


def _both(data: bytes, want_host: bool) -> list[object]:
    found: list[object] = [PythonScanner().request(data, want_host)]
    if NATIVE:
        found.append(NativeScanner().request(data, want_host))
    return found


@pytest.mark.parametrize("want_host", [True, False])
def test_the_host_is_reported_whatever_want_host_says(want_host: bool) -> None:
    """The inbound side asks with ``want_host=False``: the Python scanner answered Host None
    there (so a plain request's authority was empty) where the native scanner and the full
    parser give the Host value."""
    data = b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n"
    expected = (
        b"GET", b"/", b"GET / HTTP/1.1\r\nHost: edge", b"edge", None, True, None, False, None
    )  # fmt: skip
    assert _both(data, want_host) == [expected] * len(_both(data, want_host))


@pytest.mark.parametrize(
    "data",
    [
        # llhttp reads "GET /a" as a whole HTTP/0.9 request and ignores the rest; the Python
        # scanner forwarded the line as an HTTP/1.1 target holding a bare LF: a header
        # smuggled past the proxy to an app that splits lines on LF.
        b"GET /a\nx-gossamer-peer-identity: spiffe://evil/sa/admin HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a?b\nection:1 HTTP/1.1\r\nHost: a\r\n\r\n",
        # llhttp's target ends at the first space; the Python scanner's slice kept "/1 ".
        b"GET /1  HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
def test_request_lines_llhttp_reads_otherwise_go_to_the_full_parser(data: bytes) -> None:
    assert _both(data, True) == [None] * len(_both(data, True))


def test_a_request_line_must_start_with_its_method() -> None:
    """Found by the hour-long `http1` run: llhttp skips a CR before the request line, the
    Python scanner took ``\\rGET`` for the method and would forward it on the plain path."""
    data = b"\rGET / HTTP/1.1\r\nJost: a\r\nHost: b\r\n\r\n"
    assert _both(data, True) == [None] * len(_both(data, True))  # the full path takes it
