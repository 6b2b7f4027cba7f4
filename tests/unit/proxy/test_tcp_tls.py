"""The TLS stream of opaque TCP: ALPN peeking, half-close both ways, truncation, identity."""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import uvloop

from gossamer.control.ca import CertificateAuthority
from gossamer.identity.credentials import Credentials
from gossamer.proxy.process.settings import (
    ControlSettings,
    IdentitySettings,
    ListenSettings,
    ProxySettings,
    WorkloadSettings,
)
from gossamer.proxy.state import ProxyState
from gossamer.proxy.tcp.proxy import TcpProxy
from gossamer.proxy.tcp.relay import RelayBuffers
from gossamer.proxy.tcp.tls_stream import (
    TCP_ALPN,
    TlsFailure,
    TlsStream,
    offered_alpn,
)
from tests.sidecar_harness import identity, make_credentials


def client_hello(alpn: list[str] | None) -> bytes:
    """The first flight of a real OpenSSL client."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="db.default.svc")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


class TestOfferedAlpn:
    def test_finds_the_offered_protocols(self) -> None:
        """The names in the ALPN extension come back in order."""
        hello = client_hello(["h2", TCP_ALPN])
        assert offered_alpn(hello) == (b"h2", b"gossamer-tcp")

    def test_hello_without_alpn(self) -> None:
        """A ClientHello with no ALPN extension offers nothing."""
        assert offered_alpn(client_hello(None)) == ()

    def test_truncated_hello_is_not_judged(self) -> None:
        """A hello that has not fully arrived gives None, not a guess."""
        hello = client_hello([TCP_ALPN])
        assert offered_alpn(hello[: len(hello) // 2]) is None

    def test_plaintext_is_not_a_hello(self) -> None:
        """HTTP or other bytes are not a ClientHello."""
        assert offered_alpn(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") is None

    def test_corrupted_hellos_never_raise(self) -> None:
        """Random damage to a hello yields a tuple or None, never an exception."""
        hello = bytearray(client_hello(["h2", TCP_ALPN]))
        rng = random.Random(3)
        for _ in range(2000):
            damaged = bytearray(hello)
            for _ in range(rng.randint(1, 4)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            result = offered_alpn(bytes(damaged[: rng.randint(0, len(damaged))]))
            assert result is None or isinstance(result, tuple)


class Recorder(asyncio.BufferedProtocol):
    """A relay-end stand-in that records what the stream delivers."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.buffer = bytearray(64 * 1024)
        self.eof = asyncio.Event()
        self.lost = asyncio.Event()
        self.lost_exc: Exception | None = None
        self.transport: Any = None
        self.got = asyncio.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]
        self.got.set()

    def eof_received(self) -> bool:
        self.eof.set()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_exc = exc
        self.lost.set()

    async def wait_for(self, size: int) -> bytes:
        while len(self.data) < size:
            self.got.clear()
            await asyncio.wait_for(self.got.wait(), 5)
        return bytes(self.data)


class Pair:
    def __init__(self, client: TlsStream, server: TlsStream) -> None:
        self.client, self.server = client, server
        self.client_app, self.server_app = Recorder(), Recorder()
        client.attach(self.client_app)
        server.attach(self.server_app)


@pytest.fixture
def creds(tmp_path: Path) -> Iterator[dict[str, Credentials]]:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    made = {name: make_credentials(ca, tmp_path / name, name) for name in ("app", "db-blue")}
    # as the inbound listener sets it up
    made["db-blue"].server_context.set_alpn_protocols(["h2", "http/1.1", TCP_ALPN])
    yield made


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(asyncio.wait_for(coro_fn(), 20))  # type: ignore[arg-type]


async def open_pair(
    creds: dict[str, Credentials], expect: str | None = None
) -> tuple[Pair | None, TlsStream, asyncio.Server]:
    loop = asyncio.get_running_loop()
    buffers = RelayBuffers(64 * 1024)
    servers: list[TlsStream] = []

    def make_server() -> TlsStream:
        stream = TlsStream(creds["db-blue"].server_context, buffers, server_side=True)
        servers.append(stream)
        return stream

    server = await loop.create_server(make_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    context = creds["app"].alpn_client_context(TCP_ALPN)
    assert context is not None
    client = TlsStream(context, buffers, server_side=False, server_hostname="db-blue",
                       expect_identity=expect or identity("db-blue").uri)
    await loop.create_connection(lambda: client, "127.0.0.1", port)
    try:
        await client.ready
    except TlsFailure:
        return None, client, server
    await asyncio.wait_for(servers[0].ready, 5)
    return Pair(client, servers[0]), client, server


class TestTlsStream:
    def test_negotiates_gossamer_tcp(self, creds: dict[str, Credentials]) -> None:
        """Both sides agree on ALPN gossamer-tcp and see each other's identity."""

        async def scenario() -> None:
            pair, _, server = await open_pair(creds)
            assert pair is not None
            assert pair.client.get_extra_info("ssl_object").selected_alpn_protocol() == TCP_ALPN
            assert pair.server.peer_identity == identity("app").uri
            pair.client.close()
            server.close()

        run(scenario)

    def test_client_half_close_keeps_the_answer_flowing(
        self, creds: dict[str, Credentials]
    ) -> None:
        """After the client's write_eof the server sees EOF yet can still send back."""

        async def scenario() -> None:
            pair, _, server = await open_pair(creds)
            assert pair is not None
            pair.client.write(b"request")
            pair.client.write_eof()
            assert await pair.server_app.wait_for(7) == b"request"
            await asyncio.wait_for(pair.server_app.eof.wait(), 5)
            pair.server.write(b"answer after EOF")
            assert await pair.client_app.wait_for(16) == b"answer after EOF"
            pair.server.write_eof()
            await asyncio.wait_for(pair.client_app.eof.wait(), 5)
            assert pair.client_app.lost_exc is None
            pair.client.close()
            pair.server.close()
            server.close()

        run(scenario)

    def test_fin_without_close_notify_is_a_reset(self, creds: dict[str, Credentials]) -> None:
        """A TCP FIN that does not follow close_notify reaches the app as an error."""

        async def scenario() -> None:
            pair, _, server = await open_pair(creds)
            assert pair is not None
            assert pair.client.raw is not None
            pair.client.raw.write_eof()  # a bare FIN
            await asyncio.wait_for(pair.server_app.lost.wait(), 5)
            assert pair.server_app.lost_exc is not None
            assert not pair.server_app.eof.is_set()
            server.close()

        run(scenario)

    def test_paused_reading_holds_data_until_resumed(
        self, creds: dict[str, Credentials]
    ) -> None:
        """Nothing is delivered while paused; everything arrives after resume."""

        async def scenario() -> None:
            pair, _, server = await open_pair(creds)
            assert pair is not None
            pair.server.pause_reading()
            pair.client.write(b"x" * 100_000)
            await asyncio.sleep(0.2)
            assert len(pair.server_app.data) == 0
            pair.server.resume_reading()
            assert len(await pair.server_app.wait_for(100_000)) == 100_000
            pair.client.close()
            server.close()

        run(scenario)

    def test_writes_to_a_closing_connection_are_dropped_not_piled_up(
        self, creds: dict[str, Credentials]
    ) -> None:
        """Once the TCP connection is closing nothing written can arrive: a relay end still
        pushing a bulk transfer must not grow the ciphertext BIO (it reached megabytes)."""

        async def scenario() -> None:
            pair, _, server = await open_pair(creds)
            assert pair is not None and pair.server.raw is not None
            pair.server.raw.close()
            for _ in range(16):
                pair.server.write(b"x" * 65536)
            assert pair.server._outgoing.pending == 0
            await asyncio.wait_for(pair.server_app.lost.wait(), 5)
            pair.client.close()
            server.close()

        run(scenario)

    def test_wrong_identity_fails_the_handshake(self, creds: dict[str, Credentials]) -> None:
        """A peer without the expected SPIFFE ID is refused with a precise cause."""

        async def scenario() -> None:
            pair, client, server = await open_pair(creds, expect=identity("db-green").uri)
            assert pair is None
            with pytest.raises(TlsFailure) as info:
                await client.ready
            assert info.value.cause == "upstream-identity-mismatch"
            server.close()

        run(scenario)


def tcp_proxy(creds: Credentials) -> TcpProxy:
    settings = ProxySettings(
        workload=WorkloadSettings(service="app"),
        listen=ListenSettings(outbound=None, inbound=None),
        control=ControlSettings(),
        identity=IdentitySettings(workdir=creds.workdir),
    )
    state = ProxyState(settings, credentials=creds)
    return TcpProxy(state, creds)


class TestAlpnClientContext:
    def test_no_certificate_yet_is_a_connect_failure(self, tmp_path: Path) -> None:
        """Before the first certificate the TCP proxy has no context: connect-failed."""
        fresh = Credentials(tmp_path / "fresh")
        assert fresh.alpn_client_context(TCP_ALPN) is None
        with pytest.raises(TlsFailure, match="no workload certificate") as info:
            tcp_proxy(fresh)._client_context()
        assert info.value.cause == "connect-failed"

    def test_tcp_proxy_uses_the_credentials_context(
        self, creds: dict[str, Credentials]
    ) -> None:
        """The TCP proxy connects with the credentials' own gossamer-tcp context."""
        context = tcp_proxy(creds["app"])._client_context()
        assert context is creds["app"].alpn_client_context(TCP_ALPN)

    def test_renewed_certificate_is_used_by_new_connections(
        self, creds: dict[str, Credentials], tmp_path: Path
    ) -> None:
        """After a renewal the same context presents the new certificate to the next peer."""
        context = creds["app"].alpn_client_context(TCP_ALPN)

        async def not_after() -> str:
            pair, _, server = await open_pair(creds)
            assert pair is not None
            value = str(pair.server.get_extra_info("peercert")["notAfter"])
            pair.client.close()
            server.close()
            return value

        async def scenario() -> None:
            before = await not_after()
            ca = CertificateAuthority.load_or_create(tmp_path / "ca")
            cert, key = ca.issue_keypair(identity("app"), timedelta(hours=7))
            key_path = tmp_path / "renewed.key"
            key_path.write_bytes(key)
            creds["app"].install(cert, key_path, ca.root_pem)
            assert creds["app"].alpn_client_context(TCP_ALPN) is context
            assert await not_after() != before

        run(scenario)


class TestClaimDecision:
    """Which accepted sockets the TCP side takes, decided from a peek at the ClientHello."""

    @staticmethod
    def peek(data: bytes) -> tuple[bool | None, int]:
        from gossamer.proxy.tcp.proxy import TcpProxy

        a, b = socket.socketpair()
        with a, b:
            a.sendall(data)
            b.setblocking(False)
            return TcpProxy._peek_hello(b)

    def test_only_gossamer_tcp_is_taken(self) -> None:
        """A hello offering only gossamer-tcp would negotiate it: the relay takes it."""
        assert self.peek(client_hello([TCP_ALPN]))[0] is True

    def test_http_offers_win_over_tcp(self) -> None:
        """The inbound server prefers h2 and http/1.1: such hellos stay with HTTP."""
        assert self.peek(client_hello(["h2", TCP_ALPN]))[0] is False
        assert self.peek(client_hello(None))[0] is False

    def test_partial_hello_says_how_much_it_needs(self) -> None:
        """An incomplete first record is undecided and reports the record's full size."""
        hello = client_hello([TCP_ALPN])
        verdict, needed = self.peek(hello[:30])
        assert verdict is None and needed == len(hello)

    def test_plaintext_is_not_taken(self) -> None:
        """Bytes that are not a TLS handshake record are left alone."""
        assert self.peek(b"GET / HTTP/1.1\r\n")[0] is False
