"""AdminServer endpoints over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gossamer.proxy.process.admin import AdminServer
from gossamer.proxy.process.settings import Address

METRICS = b'# TYPE gossamer_requests_total counter\ngossamer_requests_total{code="200"} 3\n'


class FakeState:
    def __init__(self) -> None:
        self.live = True
        self.ready: tuple[bool, str] = (True, "")
        self.config: dict[str, Any] = {"version": 7, "outbound": {"services": []}}
        self.fail_metrics = False

    def is_live(self) -> bool:
        return self.live

    def readiness(self) -> tuple[bool, str]:
        return self.ready

    def render_metrics(self) -> bytes:
        if self.fail_metrics:
            raise RuntimeError("registry broken")
        return METRICS

    def config_json(self) -> dict[str, Any]:
        return self.config


class Response:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }


async def read_response(reader: asyncio.StreamReader) -> Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    resp = Response(head)
    resp.body = await asyncio.wait_for(reader.readexactly(int(resp.headers["content-length"])), 5)
    return resp


async def request(addr: Address, raw: bytes) -> Response:
    reader, writer = await asyncio.open_connection(addr.host, addr.port)
    try:
        writer.write(raw)
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


def serve(
    state: FakeState, scenario: Callable[[Address], Awaitable[None]], timeout: float = 20
) -> None:
    async def main() -> None:
        server = AdminServer(Address("127.0.0.1", 0), state)
        addr = await server.start()
        try:
            await asyncio.wait_for(scenario(addr), timeout)
        finally:
            await server.close()

    asyncio.run(main())


def test_start_binds_a_free_port() -> None:
    """Port 0 is replaced by the real bound port on 127.0.0.1."""
    seen: list[Address] = []

    async def scenario(addr: Address) -> None:
        seen.append(addr)

    serve(FakeState(), scenario)
    assert seen[0].host == "127.0.0.1"
    assert seen[0].port > 0


def test_live() -> None:
    """GET /live answers 200 live."""

    async def scenario(addr: Address) -> None:
        resp = await request(addr, get("/live"))
        assert (resp.status, resp.body) == (200, b"live\n")

    serve(FakeState(), scenario)


def test_ready_and_not_ready_with_reason() -> None:
    """GET /ready is 200 when ready and 503 with the reason when not."""
    state = FakeState()

    async def scenario(addr: Address) -> None:
        resp = await request(addr, get("/ready"))
        assert (resp.status, resp.body) == (200, b"ready\n")
        state.ready = (False, "no certificate yet")
        resp = await request(addr, get("/ready"))
        assert resp.status == 503
        assert resp.body == b"not ready: no certificate yet\n"

    serve(state, scenario)


def test_metrics_in_prometheus_text_format() -> None:
    """GET /metrics returns the rendered bytes with the 0.0.4 text content type."""

    async def scenario(addr: Address) -> None:
        resp = await request(addr, get("/metrics"))
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert resp.body == METRICS

    serve(FakeState(), scenario)


def test_config_as_json() -> None:
    """GET /config returns the state's config as JSON (query strings are ignored)."""
    state = FakeState()

    async def scenario(addr: Address) -> None:
        resp = await request(addr, get("/config?pretty=1"))
        assert resp.status == 200
        assert resp.headers["content-type"] == "application/json"
        assert json.loads(resp.body) == state.config

    serve(state, scenario)


def test_unknown_path_is_404() -> None:
    """Paths the server does not know get 404."""

    async def scenario(addr: Address) -> None:
        assert (await request(addr, get("/nope"))).status == 404

    serve(FakeState(), scenario)


def test_non_get_is_405() -> None:
    """Any method but GET gets 405 with an Allow header, and the connection closes."""

    async def scenario(addr: Address) -> None:
        raw = b"POST /live HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
        resp = await request(addr, raw)
        assert resp.status == 405
        assert resp.headers["allow"] == "GET"
        assert resp.headers["connection"] == "close"

    serve(FakeState(), scenario)


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET live HTTP/1.1\r\n\r\n",
        b"GET /live HTTP/2.0\r\n\r\n",
        b"GET /live HTTP/1.1\r\nno colon here\r\n\r\n",
    ],
)
def test_malformed_request_is_400(raw: bytes) -> None:
    """A request that does not parse gets 400 and the connection closes."""

    async def scenario(addr: Address) -> None:
        resp = await request(addr, raw)
        assert resp.status == 400
        assert resp.headers["connection"] == "close"

    serve(FakeState(), scenario)


def test_oversized_head_is_431() -> None:
    """A request head over the limit is refused with 431."""

    async def scenario(addr: Address) -> None:
        raw = b"GET /live HTTP/1.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
        resp = await request(addr, raw)
        assert resp.status == 431

    serve(FakeState(), scenario)


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    """HTTP/1.1 requests reuse the connection until the client closes it."""

    async def scenario(addr: Address) -> None:
        reader, writer = await asyncio.open_connection(addr.host, addr.port)
        try:
            for path, expected in (("/live", b"live\n"), ("/ready", b"ready\n")):
                writer.write(get(path))
                resp = await read_response(reader)
                assert resp.body == expected
                assert "connection" not in resp.headers
        finally:
            writer.close()

    serve(FakeState(), scenario)


def test_http10_connection_is_closed_after_the_response() -> None:
    """An HTTP/1.0 request without keep-alive gets Connection: close and EOF."""

    async def scenario(addr: Address) -> None:
        reader, writer = await asyncio.open_connection(addr.host, addr.port)
        try:
            writer.write(b"GET /live HTTP/1.0\r\n\r\n")
            resp = await read_response(reader)
            assert resp.headers["connection"] == "close"
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()

    serve(FakeState(), scenario)


def test_state_failure_is_500() -> None:
    """An exception from the state becomes a 500 instead of a dropped connection; its text
    goes to the log, not to the caller (issue 11, lows)."""
    state = FakeState()
    state.fail_metrics = True

    async def scenario(addr: Address) -> None:
        resp = await request(addr, get("/metrics"))
        assert resp.status == 500
        assert b"RuntimeError" in resp.body and b"registry broken" not in resp.body

    serve(state, scenario)


def test_close_stops_listening() -> None:
    """After close() new connections are refused and open ones are closed."""

    async def main() -> None:
        server = AdminServer(Address("127.0.0.1", 0), FakeState())
        addr = await server.start()
        reader, writer = await asyncio.open_connection(addr.host, addr.port)
        await asyncio.wait_for(server.close(), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection(addr.host, addr.port)

    asyncio.run(asyncio.wait_for(main(), 20))
