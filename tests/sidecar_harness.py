"""Test harness: real sidecar data paths (outbound → mTLS → inbound → app) in one background loop.

Two sidecars ("client" and "server") are built from the real components with certificates
from a real CA; the route table is installed directly instead of by a control plane. Tests talk
to them with blocking sockets from the test thread. A programmable app server stands behind
the server sidecar.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvloop
from bench.procs import free_port as free_port  # re-exported: outside the ephemeral range

from gossamer.control.ca import CertificateAuthority
from gossamer.identity.credentials import Credentials
from gossamer.identity.spiffe import SpiffeId
from gossamer.proxy.h2 import close_h2
from gossamer.proxy.http1.inbound import InboundListener
from gossamer.proxy.http1.outbound import OutboundConnection
from gossamer.proxy.process.settings import (
    Address,
    ControlSettings,
    IdentitySettings,
    ListenSettings,
    ProxySettings,
    WorkloadSettings,
)
from gossamer.proxy.state import ProxyState
from gossamer.proxy.tcp.proxy import TcpProxy

TD = "gossamer.local"

AppHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


class LoopThread:
    """A uvloop event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class MemoryTls:
    """A TLS client and server joined by memory BIOs, handshake done (real OpenSSL, no
    sockets): ``pump`` carries what each wrote to the other."""

    def __init__(
        self, client: ssl.SSLContext, server: ssl.SSLContext, server_hostname: str = "peer"
    ) -> None:
        self._c_in, self._c_out, self._s_in, self._s_out = (ssl.MemoryBIO() for _ in range(4))
        self.client = client.wrap_bio(self._c_in, self._c_out, server_hostname=server_hostname)
        self.server = server.wrap_bio(self._s_in, self._s_out, server_side=True)
        pending = [self.client, self.server]
        for _ in range(20):
            for end in list(pending):
                try:
                    end.do_handshake()
                    pending.remove(end)
                except ssl.SSLWantReadError:
                    pass
            self.pump()
            if not pending:
                break
        assert not pending, "handshake did not finish"

    def pump(self) -> None:
        self._s_in.write(self._c_out.read())
        self._c_in.write(self._s_out.read())


def handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[str | None, str]:
    """One TLS handshake in memory: (the ALPN chosen, notAfter of the client's certificate)."""
    tls = MemoryTls(client, server)
    peer = tls.server.getpeercert()
    assert peer is not None
    return tls.client.selected_alpn_protocol(), str(peer["notAfter"])


def identity(service: str) -> SpiffeId:
    return SpiffeId(TD, "default", service)


def make_credentials(ca: CertificateAuthority, workdir: Path, service: str) -> Credentials:
    creds = Credentials(workdir)
    cert, key = ca.issue_keypair(identity(service), timedelta(hours=1))
    key_path = workdir / "new.key"
    key_path.write_bytes(key)
    creds.install(cert, key_path, ca.root_pem)
    return creds


class Dropper:
    """A destination whose app dies while answering: it proves ``service``'s identity (mTLS,
    as its sidecar would; ``alpn``: the protocols it offers), reads the first request head
    (HTTP/2: the connection preface) and closes the connection unanswered."""

    def __init__(self, lt: LoopThread, ca: CertificateAuthority, workdir: Path, service: str,
                 alpn: list[str] | None = None) -> None:  # fmt: skip
        workdir.mkdir()
        tls = make_credentials(ca, workdir, service).server_context
        if alpn:
            tls.set_alpn_protocols(alpn)
        self.requests = 0
        self.server: asyncio.Server = lt.run(self._start(tls))
        self.port: int = self.server.sockets[0].getsockname()[1]

    async def _start(self, tls: ssl.SSLContext) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        writer.close()


class Sidecar:
    def __init__(self, state: ProxyState, creds: Credentials) -> None:
        self.state = state
        self.creds = creds
        self.outbound: Address | None = None
        self.inbound: Address | None = None
        self.listener: InboundListener | None = None
        self.server: asyncio.Server | None = None

    async def close(self) -> None:
        """Stop listening and close what is open: connections, TCP relays (CONNECT tunnels
        among them), pools, the HTTP/2 pools."""
        if self.listener:
            self.listener.close()
        if self.server:
            self.server.close()
        for conn in list(self.state.connections):
            conn.close()
        if self.state.tunnels is not None:
            await self.state.tunnels.drain(0.5)
        self.state.outbound_pool.close_all()
        self.state.app_pool.close_all()
        close_h2(self.state)


async def start_sidecar(
    ca: CertificateAuthority, workdir: Path, service: str, app: Address | None,
    *, tcp_app: Address | None = None, configured: bool = True, **listen: Any,
) -> Sidecar:
    """A sidecar in this process; ``listen`` overrides ``ListenSettings`` fields. Its TCP
    side (``TcpProxy``: CONNECT tunnels' relays, inbound ``gossamer-tcp`` to ``tcp_app`` or
    ``app``) is wired as the sidecar process wires it. ``configured``: it starts with a
    config of its own (version 0, no outbound service, STRICT), as a sidecar has once its
    control plane answered; without one it refuses every request (503 proxy-not-ready)."""
    creds = make_credentials(ca, workdir, service)
    settings = ProxySettings(
        workload=WorkloadSettings(service=service, app=app, tcp_app=tcp_app),
        listen=ListenSettings(
            outbound=Address("127.0.0.1", 0), inbound=Address("127.0.0.1", 0),
            admin=Address("127.0.0.1", 0), **listen,
        ),
        control=ControlSettings(),
        identity=IdentitySettings(workdir=workdir),
    )
    state = ProxyState(settings, credentials=creds)
    if configured:
        state.apply_snapshot(0, snapshot(0, {}, source=service))
    sidecar = Sidecar(state, creds)
    sidecar.listener = InboundListener(state, Address("127.0.0.1", 0), creds)
    tcp = TcpProxy(state, creds)
    state.tunnels = sidecar.listener.tcp = tcp
    sidecar.inbound = sidecar.listener.start()
    loop = asyncio.get_running_loop()
    sidecar.server = await loop.create_server(lambda: OutboundConnection(state), "127.0.0.1", 0)
    port = sidecar.server.sockets[0].getsockname()[1]
    sidecar.outbound = Address("127.0.0.1", port)
    return sidecar


def snapshot(
    version: int,
    services: dict[str, list[int]],
    *,
    identities: dict[str, str] | None = None,
    unknown: list[str] | None = None,
    source: str = "client",
) -> dict[str, Any]:
    identities = identities or {}
    return {
        "version": version,
        "trust_domain": TD,
        "proxy": {"service": source, "namespace": "default", "identity": identity(source).uri},
        "inbound": {"mtls": "STRICT"},
        "outbound": {
            "services": [
                {
                    "name": name,
                    "namespace": "default",
                    "identity": identities.get(name, identity(name).uri),
                    "protocol": "http",
                    "endpoints": [
                        {"address": "127.0.0.1", "port": p, "labels": {}} for p in ports
                    ],
                }
                for name, ports in services.items()
            ],
            "unknown": unknown or [],
        },
    }


_LEFTOVER: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def recv_response(
    sock: socket.socket, *, head_request: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response (Content-Length, chunked or close-delimited) from ``sock``.

    Bytes read past the end of the response are kept for the next call on the same socket.
    """
    buf = _LEFTOVER.pop(sock, b"")
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response head: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if head_request or status in (204, 304) or 100 <= status < 200:
        _LEFTOVER[sock] = rest
        return status, headers, b""
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(rest) < length:
            rest += _recv_some(sock)
        _LEFTOVER[sock] = rest[length:]
        return status, headers, rest[:length]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += _recv_some(sock)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += _recv_some(sock)
            body += rest[:size]
            rest = rest[size + 2 :]
            if size == 0:
                _LEFTOVER[sock] = rest
                return status, headers, body
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return status, headers, rest
        rest += chunk


def _recv_some(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("closed inside a body")
    return chunk


def cyclic_garbage(action: Callable[[], None]) -> Counter[str]:
    """Run ``action`` with the cyclic GC off; the types of what it left for the GC to find,
    among the data path's own objects (our classes, httptools parsers, TLS objects; event
    loop internals are left out, as a loop from an earlier test may be collected here)."""
    gc.collect()
    gc.disable()
    try:
        action()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return Counter(
            type(o).__qualname__
            for o in gc.garbage
            if type(o).__module__.startswith(("gossamer", "httptools", "ssl", "_ssl"))
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def app_proxy_env(monkeypatch: Any, outbound_port: int) -> None:
    """Give this process the proxy environment `gossamer run` gives an app, with the sidecar's
    outbound port (grpcio reads it when a channel is made: a channel to ``greeter:80`` then
    tunnels with CONNECT); ``monkeypatch`` undoes it."""
    for name in ("grpc_proxy", "https_proxy", "HTTPS_PROXY", "no_grpc_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{outbound_port}")
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1,::1")
