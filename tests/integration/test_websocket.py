"""WebSocket (HTTP/1.1 Upgrade) through two sidecars with mTLS, real client and server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.sync.client import connect

from gossamer.control.ca import CertificateAuthority
from gossamer.proxy.process.settings import Address
from tests.sidecar_harness import LoopThread, Sidecar, identity, snapshot, start_sidecar


async def echo(ws: ServerConnection) -> None:
    peer = ws.request.headers.get("x-gossamer-peer-identity", "") if ws.request else ""
    await ws.send(f"peer {peer}")
    async for message in ws:
        await ws.send(message)


class Pair:
    def __init__(self, lt: LoopThread, client: Sidecar) -> None:
        self.lt = lt
        self.client = client

    def connect(self) -> socket.socket:
        assert self.client.outbound is not None
        return socket.create_connection(("127.0.0.1", self.client.outbound.port), timeout=10)


@contextmanager
def two_sidecars(
    tmp_path: Path, start_app: Callable[[], Awaitable[tuple[Any, int]]]
) -> Iterator[Pair]:
    """The app ``start_app`` starts (it returns its server and port) behind a ``chat``
    sidecar, and a ``frontend`` sidecar whose outbound port the test calls."""
    lt = LoopThread()
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    server, port = lt.run(start_app())
    upstream = lt.run(start_sidecar(ca, tmp_path / "s", "chat", Address("127.0.0.1", port)))
    client = lt.run(start_sidecar(ca, tmp_path / "c", "frontend", None))
    assert upstream.inbound is not None
    snap = snapshot(1, {"chat": [upstream.inbound.port]}, source="frontend")

    async def install() -> None:
        client.state.apply_snapshot(1, snap)

    lt.run(install())
    try:
        yield Pair(lt, client)
    finally:
        async def stop() -> None:
            server.close()
            for sc in (client, upstream):
                await sc.close()
            await asyncio.sleep(0.05)

        lt.run(stop())
        lt.stop()


async def start_echo() -> tuple[Any, int]:
    server = await serve(echo, "127.0.0.1", 0)
    return server, next(iter(server.sockets)).getsockname()[1]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with two_sidecars(tmp_path, start_echo) as made:
        yield made


def test_websocket_echo_through_two_sidecars(pair: Pair) -> None:
    """Upgrade is forwarded hop by hop; then frames flow both ways untouched."""
    with connect("ws://chat/echo", sock=pair.connect(), open_timeout=10) as ws:
        assert ws.recv(timeout=5) == f"peer {identity('frontend').uri}"
        for i in range(50):
            ws.send(f"message {i}")
            assert ws.recv(timeout=5) == f"message {i}"
        big = b"x" * 1_000_000
        ws.send(big)
        assert ws.recv(timeout=10) == big


def test_refused_upgrade_is_answered_and_connection_closed(pair: Pair) -> None:
    """An upgrade the upstream does not accept gets its answer; the connection then closes."""
    with pair.connect() as sock:
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: nonsense\r\n\r\n"
        )
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 4")  # websockets answers 426/400 to a bad upgrade


class RecordingApp(asyncio.Protocol):
    """An app that ignores Upgrade: answers every request head with 200 and records every
    byte it reads (issue 11, finding 1)."""

    received: list[bytes]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        RecordingApp.received.append(data)
        for _ in range(data.count(b"\r\n\r\n")):
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            )


def test_bytes_after_an_upgrade_wait_for_101_and_are_dropped_without_it(tmp_path: Path) -> None:
    """A request hidden behind an Upgrade (with a forged identity header) never reaches an app
    that answers the upgrade with anything but 101: the sidecars hold those bytes, stop
    reading, and close the connection after the answer."""
    RecordingApp.received = []

    async def start_app() -> tuple[Any, int]:
        server = await asyncio.get_running_loop().create_server(RecordingApp, "127.0.0.1", 0)
        return server, server.sockets[0].getsockname()[1]

    forged = b"spiffe://gossamer.local/ns/default/sa/admin"
    with two_sidecars(tmp_path, start_app) as made, made.connect() as sock:
        sock.sendall(
            b"GET /a HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"\r\nGET /admin HTTP/1.1\r\nHost: chat\r\nx-gossamer-peer-identity: "
            + forged + b"\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    seen = b"".join(RecordingApp.received)
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1
    assert b"GET /a " in seen
    assert b"/admin" not in seen and forged not in seen
