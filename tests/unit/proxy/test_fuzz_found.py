"""Regressions found by the ``http1`` fuzz target (``fuzz/fuzz_http1.py``, docs/fuzzing.md):
the request parser path of the HTTP/1.1 downstream connections must see a request the same
way whichever path (plain scanner, native or Python, or the full llhttp parser) takes it.

The connections run on a fake transport with ``dispatch`` recording the request, as in the
fuzz target.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gossamer.protocol import scanner
from gossamer.protocol.scanner import PythonScanner
from gossamer.proxy.http1.exchange import Exchange
from gossamer.proxy.http1.inbound import InboundConnection
from gossamer.proxy.http1.outbound import OutboundConnection
from gossamer.proxy.process.settings import (
    ControlSettings,
    IdentitySettings,
    ListenSettings,
    ProxySettings,
    WorkloadSettings,
)
from gossamer.proxy.state import ProxyState
from tests.tools import require
from tests.unit.proxy.test_downstream_errors import FakeTransport


def _state() -> ProxyState:
    settings = ProxySettings(
        workload=WorkloadSettings(service="frontend"),
        listen=ListenSettings(),
        control=ControlSettings(),
        identity=IdentitySettings(workdir=Path("/nonexistent/gossamer-test")),
    )
    return ProxyState(settings)


class Outbound(OutboundConnection):
    sniffed = None

    def dispatch(self, ex: Exchange) -> None:
        self.seen = ex


class Inbound(InboundConnection):
    def dispatch(self, ex: Exchange) -> None:
        self.seen = ex


def _parse(kind: type[Outbound | Inbound], data: bytes, *, python_scanner: bool) -> Exchange:
    conn = kind(_state())
    conn.connection_made(FakeTransport())
    if python_scanner:
        conn.scanner = PythonScanner()
    conn.data_received(data)
    return conn.seen


@pytest.mark.parametrize("kind", [Outbound, Inbound])
def test_trailing_whitespace_is_not_part_of_a_header_value(kind: type[Outbound | Inbound]) -> None:
    """llhttp keeps the blanks after a value; the full path routed "catalog \\t" (no such
    service) where the plain path, which strips them, routed "catalog"."""
    head = b"Host: catalog \t\r\nX-Tag: a b  \r\n"
    full = _parse(
        kind, b"POST / HTTP/1.1\r\n" + head + b"Content-Length: 0\r\n\r\n", python_scanner=False
    )
    plain = _parse(kind, b"GET / HTTP/1.1\r\n" + head + b"\r\n", python_scanner=False)
    assert full.authority == plain.authority == b"catalog"
    assert (b"X-Tag", b"a b") in full.header_list()


@pytest.mark.parametrize("python_scanner", [True, False])
def test_an_inbound_plain_request_has_the_host_as_its_authority(python_scanner: bool) -> None:
    """The Python scanner gave the inbound side (which asks without ``want_host``) no Host,
    so users' filters saw an empty authority only with GOSSAMER_HTTP1_NATIVE=off."""
    if not python_scanner:
        require(scanner._lib is not None, "the native HTTP/1.1 scanner (make native)")
    seen = _parse(
        Inbound, b"GET / HTTP/1.1\r\nHost: orders:8080\r\n\r\n", python_scanner=python_scanner
    )
    assert seen.authority == b"orders:8080"
