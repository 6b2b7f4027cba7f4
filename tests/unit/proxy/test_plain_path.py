"""The plain path forwards what the full path would: the same requests reach the app and the
same responses reach the client, only without building header lists.

Each case runs through an ``InboundConnection`` and an ``UpstreamConnection`` on fake transports
twice: as the proxy runs (plain path where it applies) and with the plain path switched off;
the whole module runs once with each plain-message scanner (native and Python).
The upstream request and the downstream response must carry the same start line, the same
headers (compared as a multiset, so line order and spacing may differ) and the same body.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossamer.protocol import scanner
from gossamer.proxy.http1.downstream import DownstreamConnection
from gossamer.proxy.http1.inbound import InboundConnection
from gossamer.proxy.http1.upstream import UpstreamConnection
from gossamer.proxy.process.settings import (
    Address,
    ControlSettings,
    IdentitySettings,
    ListenSettings,
    ProxySettings,
    WorkloadSettings,
)
from gossamer.proxy.state import ProxyState
from tests.tools import require
from tests.unit.proxy.test_downstream_errors import FakeTransport

APP = ("127.0.0.1", 9)

NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 25 Nov 2026 22:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
    b'ETag: "x"\r\n\r\nhello'
)
CASES = {
    "wrk": (b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n", NGINX, (True, True)),
    "requests": (
        b"GET /a?b=1 HTTP/1.1\r\nHost: edge\r\nUser-Agent: python-requests/2\r\n"
        b"Accept-Encoding: gzip\r\nAccept: */*\r\nConnection: keep-alive\r\n"
        b"X-Request-Id: given-1\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nserver: uvicorn\r\n\r\n",
        (True, True),
    ),
    "spoofed identity": (
        b"GET / HTTP/1.1\r\nHost: edge\r\nx-gossamer-peer-identity: spiffe://x/ns/a/sa/b\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
        (True, True),
    ),
    "chunked response": (
        b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        (True, False),
    ),
    "post": (
        b"POST /p HTTP/1.1\r\nHost: edge\r\nContent-Length: 3\r\n\r\nabc",
        NGINX,
        (False, True),
    ),
    "head": (
        b"HEAD / HTTP/1.1\r\nHost: edge\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        (True, False),  # the response to HEAD takes the full path
    ),
    "keep-alive header": (
        b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
        (True, False),
    ),
}


@pytest.fixture(autouse=True, params=["native", "python"])
def which_scanner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each test with the native scanner (when built) and with the Python one."""
    if request.param == "python":
        monkeypatch.setattr(scanner, "_lib", None)
    else:
        require(scanner._lib is not None, "the native HTTP/1.1 scanner (make builds it)")
    return str(request.param)


def _state() -> ProxyState:
    settings = ProxySettings(
        workload=WorkloadSettings("edge", app=Address(*APP)),
        listen=ListenSettings(),
        control=ControlSettings(),
        identity=IdentitySettings(Path("/nonexistent")),
    )
    state = ProxyState(settings)
    state.apply_snapshot(
        1,
        {
            "version": 1,
            "proxy": {"service": "edge", "namespace": "default"},
            "inbound": {"mtls": "PERMISSIVE"},
            "outbound": {"services": [], "unknown": []},
        },
    )
    return state


def _run(
    request: bytes, response: bytes, monkeypatch: pytest.MonkeyPatch
) -> tuple[bytes, bytes, tuple[bool, bool]]:
    """(bytes the app got, bytes the client got, whether the plain paths took the request and
    the response)."""
    state = _state()
    down = InboundConnection(state)
    client = FakeTransport()
    down.connection_made(client)
    up = UpstreamConnection(state.app_pool, APP)
    app = FakeTransport()
    up.connection_made(app)
    state.app_pool.release(up)
    taken = {"request": False, "response": False}
    plain_request = DownstreamConnection.plain_request
    plain_response = UpstreamConnection._plain_response

    def spy_request(self: DownstreamConnection, data: bytes) -> bool:
        taken["request"] = plain_request(self, data)
        return taken["request"]

    def spy_response(
        self: UpstreamConnection, data: bytes, downstream: DownstreamConnection
    ) -> bool:
        taken["response"] = plain_response(self, data, downstream)
        return taken["response"]

    with monkeypatch.context() as m:
        m.setattr(DownstreamConnection, "plain_request", spy_request)
        m.setattr(UpstreamConnection, "_plain_response", spy_response)
        down.data_received(request)
        up.data_received(response)
    return bytes(app.data), bytes(client.data), (taken["request"], taken["response"])


def _normalise(message: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    head, _, body = message.partition(b"\r\n\r\n")
    line, *lines = head.split(b"\r\n")
    headers = []
    for raw in lines:
        name, _, value = raw.partition(b":")
        name = name.lower()
        value = value.strip()
        if name == b"x-request-id" and not value.startswith(b"given"):
            value = b"<generated>"
        headers.append((name, value))
    return line, sorted(headers), body


@pytest.mark.parametrize("name", list(CASES))
def test_plain_path_forwards_what_the_full_path_does(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    request, response, plain = CASES[name]

    async def both() -> tuple[tuple[bytes, bytes, tuple[bool, bool]], ...]:
        fast = _run(request, response, monkeypatch)
        with monkeypatch.context() as m:
            m.setattr(UpstreamConnection, "_plain_response", lambda *a: False)
            m.setattr(DownstreamConnection, "plain_request", lambda *a: False)
            full = _run(request, response, monkeypatch)
        return fast, full

    (fast_app, fast_client, took_plain), (full_app, full_client, _) = asyncio.run(both())
    assert took_plain == plain
    assert fast_app and fast_client
    assert _normalise(fast_app) == _normalise(full_app)
    assert _normalise(fast_client) == _normalise(full_client)
    assert b"x-gossamer-peer-identity" not in fast_app.lower()  # plaintext: no identity


def test_plain_path_cuts_hop_by_hop_lines_and_keeps_the_rest_as_received(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def go() -> tuple[bytes, bytes, tuple[bool, bool]]:
        return _run(*CASES["requests"][:2], monkeypatch)

    app, client, plain = asyncio.run(go())
    assert plain == (True, True)
    assert app == (
        b"GET /a?b=1 HTTP/1.1\r\nHost: edge\r\nUser-Agent: python-requests/2\r\n"
        b"Accept-Encoding: gzip\r\nAccept: */*\r\nX-Request-Id: given-1\r\n\r\n"
    )
    assert client == b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nserver: uvicorn\r\n\r\n"


def test_invalid_request_falls_to_the_full_parser_for_a_precise_400(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def go() -> tuple[bytes, bytes, tuple[bool, bool]]:
        return _run(b"GET / HTTP/1.1\r\nHost : edge\r\n\r\n", NGINX, monkeypatch)

    app, client, plain = asyncio.run(go())
    assert plain == (False, False)
    assert app == b""
    assert client.startswith(b"HTTP/1.1 400 ")
    assert b"x-gossamer-error: bad-request" in client


@pytest.mark.parametrize("plain", [True, False])
def test_connection_paused_for_a_slow_client_reads_again_once_back_in_the_pool(
    plain: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's transport is above its high-water mark when a whole response arrives:
    the upstream stops reading, and must read again before the pool hands it out."""
    if not plain:
        monkeypatch.setattr(UpstreamConnection, "_plain_response", lambda *a: False)
        monkeypatch.setattr(DownstreamConnection, "plain_request", lambda *a: False)

    async def go() -> tuple[bool, bool, UpstreamConnection | None]:
        state = _state()
        down = InboundConnection(state)
        down.connection_made(FakeTransport())
        up = UpstreamConnection(state.app_pool, APP)
        app = FakeTransport()
        up.connection_made(app)
        state.app_pool.release(up)
        down.data_received(b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n")
        down.pause_writing()  # the client stopped reading
        up.data_received(NGINX)
        return app.reading, down.closed, state.app_pool.take(APP)

    reading, closed, pooled = asyncio.run(go())
    assert not closed
    assert pooled is not None
    assert reading


# --- property: any mix of headers, the plain path or the full parser, the same forwarding ---

_NAMES = [
    b"Host", b"Accept", b"User-Agent", b"X-Custom", b"Content-Type", b"Cookie", b"X-Request-Id",
    b"Connection", b"Keep-Alive", b"Upgrade", b"TE", b"Trailer", b"Proxy-Connection",
    b"X-Gossamer-Peer-Identity", b"Transfer-Encoding", b"Content-Length", b"Tea", b"Hosting",
]  # fmt: skip
_VALUES = [b"a", b"keep-alive", b"close", b"x, y", b"chunked", b"0", b"5", b" spaced  ", b""]
_RESPONSE_NAMES = [
    b"Server", b"Date", b"ETag", b"Connection", b"Keep-Alive", b"Upgrade", b"Trailer",
    b"Proxy-Authenticate", b"Vary", b"Set-Cookie",
]  # fmt: skip


def _casing(name: bytes, flips: int) -> bytes:
    return bytes(
        c ^ 0x20 if 97 <= (c | 0x20) <= 122 and (flips >> (i % 16)) & 1 else c
        for i, c in enumerate(name)
    )


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    method=st.sampled_from([b"GET", b"HEAD", b"DELETE", b"OPTIONS"]),
    request_headers=st.lists(
        st.tuples(st.sampled_from(_NAMES), st.integers(0, 0xFFFF), st.sampled_from(_VALUES)),
        max_size=6,
    ),
    status=st.sampled_from([200, 204, 304, 404, 503]),
    response_headers=st.lists(
        st.tuples(
            st.sampled_from(_RESPONSE_NAMES), st.integers(0, 0xFFFF), st.sampled_from(_VALUES)
        ),
        max_size=5,
    ),
)
def test_any_headers_forward_the_same_by_either_path(
    method: bytes,
    request_headers: list[tuple[bytes, int, bytes]],
    status: int,
    response_headers: list[tuple[bytes, int, bytes]],
) -> None:
    body = b"" if status in (204, 304) or method == b"HEAD" else b"hello"
    request = b"%b /p?q=1 HTTP/1.1\r\n%b\r\n" % (
        method,
        b"".join(b"%b: %b\r\n" % (_casing(n, f), v) for n, f, v in request_headers),
    )
    response = b"HTTP/1.1 %d X\r\n%b%b\r\n%b" % (
        status,
        b"".join(b"%b: %b\r\n" % (_casing(n, f), v) for n, f, v in response_headers),
        b"content-length: %d\r\n" % len(body) if status not in (204, 304) else b"",
        body,
    )

    async def both() -> tuple[tuple[bytes, bytes, tuple[bool, bool]], ...]:
        with pytest.MonkeyPatch.context() as m:
            fast = _run(request, response, m)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(UpstreamConnection, "_plain_response", lambda *a: False)
            m.setattr(DownstreamConnection, "plain_request", lambda *a: False)
            full = _run(request, response, m)
        return fast, full

    (fast_app, fast_client, _), (full_app, full_client, _) = asyncio.run(both())
    assert _normalise(fast_app) == _normalise(full_app)
    assert _normalise(fast_client) == _normalise(full_client)
