"""Opaque TCP through real sidecars over real mTLS, and TCP route switching with drain.

app socket → client sidecar (upstream listener "db") → mTLS, ALPN gossamer-tcp → destination
sidecar (db-blue or db-green) → a TCP app that answers every line with its own name. The
sidecars are the real components in one background loop; snapshots are installed directly
through the same handler the control-plane client uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gossamer.control.ca import CertificateAuthority
from gossamer.identity.credentials import Credentials
from gossamer.proxy.http1.inbound import InboundListener
from gossamer.proxy.process.settings import (
    Address,
    ControlSettings,
    IdentitySettings,
    ListenSettings,
    ProxySettings,
    Upstream,
    WorkloadSettings,
)
from gossamer.proxy.state import ProxyState
from gossamer.proxy.tcp.proxy import TcpProxy, TcpSnapshotHandler
from tests.sidecar_harness import TD, LoopThread, cyclic_garbage, identity, make_credentials

DRAIN_MS = 600


class TagApp:
    """A TCP app: answers each line with ``<name>:<line>``; on EOF it says ``<name>:bye`` and
    closes (so a half-closed client still gets the last word). ``echo`` lines are echoed raw."""

    def __init__(self, lt: LoopThread, name: str) -> None:
        self.name = name
        self.connections = 0
        self.received = 0  # bytes
        self.lt = lt
        self.server: asyncio.Server = lt.run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.address = Address("127.0.0.1", self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                line = await reader.readline()
                self.received += len(line)
                if not line:
                    writer.write(f"{self.name}:bye\n".encode())
                    await writer.drain()
                    return
                if line.startswith(b"bulk "):
                    size = int(line.split()[1])
                    data = await reader.readexactly(size)
                    writer.write(hashlib.sha256(data).hexdigest().encode() + b"\n")
                    writer.write(data)
                else:
                    writer.write(self.name.encode() + b":" + line)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


@dataclass
class Node:
    state: ProxyState
    tcp: TcpProxy
    handler: TcpSnapshotHandler
    creds: Credentials
    listener: InboundListener | None = None
    inbound: Address | None = None
    upstreams: dict[str, Address] = field(default_factory=dict)


async def start_node(
    ca: CertificateAuthority,
    workdir: Path,
    service: str,
    *,
    app: Address | None = None,
    upstreams: tuple[Upstream, ...] = (),
) -> Node:
    creds = make_credentials(ca, workdir, service)
    settings = ProxySettings(
        workload=WorkloadSettings(service=service, app=app),
        listen=ListenSettings(
            outbound=None, inbound=Address("127.0.0.1", 0), admin=Address("127.0.0.1", 0),
            upstreams=upstreams,
        ),
        control=ControlSettings(),
        identity=IdentitySettings(workdir=workdir),
    )
    state = ProxyState(settings, credentials=creds)
    tcp = TcpProxy(state, creds)
    node = Node(state, tcp, TcpSnapshotHandler(state, tcp), creds)
    if app is not None:
        node.listener = InboundListener(state, Address("127.0.0.1", 0), creds)
        node.listener.tcp = tcp
        node.inbound = node.listener.start()
    node.upstreams = await tcp.start()
    return node


def service_entry(name: str, ports: list[int], tcp_route: Any = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": "default",
        "identity": identity(name).uri,
        "protocol": "tcp",
        "ports": [{"port": 5432, "protocol": "tcp"}],
        "endpoints": [{"address": "127.0.0.1", "port": p, "labels": {}} for p in ports],
        "tcp_route": tcp_route,
    }


def snapshot(version: int, source: str, services: list[dict[str, Any]], *,
             inbound_tcp: bool = True) -> dict[str, Any]:
    ports = [{"port": 5432, "protocol": "tcp" if inbound_tcp else "http"}]
    return {
        "version": version,
        "trust_domain": TD,
        "proxy": {"service": source, "namespace": "default", "identity": identity(source).uri},
        "inbound": {"mtls": "STRICT", "ports": ports},
        "outbound": {"services": services, "unknown": []},
    }


def route(*backends: tuple[str, int], drain_ms: int = DRAIN_MS) -> dict[str, Any]:
    return {
        "backends": [{"service": f"{name}.default", "weight": w} for name, w in backends],
        "drain_ms": drain_ms,
    }


@dataclass
class TcpMesh:
    lt: LoopThread
    client: Node
    blue: Node
    green: Node
    apps: dict[str, TagApp]
    version: int = 1

    def install(self, node: Node, snap: dict[str, Any]) -> None:
        async def apply() -> None:
            node.handler.apply_snapshot(snap["version"], snap)

        self.lt.run(apply())

    def set_route(self, tcp_route: Any, *, identity_of_blue: str | None = None) -> None:
        self.version += 1
        assert self.blue.inbound is not None and self.green.inbound is not None
        blue = service_entry("db-blue", [self.blue.inbound.port])
        if identity_of_blue is not None:
            blue["identity"] = identity_of_blue
        services = [
            service_entry("db", [], tcp_route),
            blue,
            service_entry("db-green", [self.green.inbound.port]),
        ]
        self.install(self.client, snapshot(self.version, "app", services))

    def connect(self) -> socket.socket:
        port = self.client.upstreams["db"].port
        return socket.create_connection(("127.0.0.1", port), timeout=5)

    def metrics(self, node: Node) -> str:
        return node.state.metrics.render().decode()


def ask(sock: socket.socket, line: str) -> str:
    sock.sendall(line.encode() + b"\n")
    return read_line(sock)


def read_line(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data.decode().rstrip("\n")


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def refused(sock: socket.socket, data: bytes) -> bool:
    """Send ``data``; True when the connection is then closed without an answer."""
    try:
        sock.sendall(data)
    except (ConnectionResetError, BrokenPipeError):
        return True
    return closed_within(sock, 5)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


@pytest.fixture
def tcp_mesh(tmp_path: Path) -> Iterator[TcpMesh]:
    lt = LoopThread()
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    apps = {name: TagApp(lt, name) for name in ("blue", "green")}
    blue = lt.run(start_node(ca, tmp_path / "blue", "db-blue", app=apps["blue"].address))
    green = lt.run(start_node(ca, tmp_path / "green", "db-green", app=apps["green"].address))
    db = Upstream("db", Address("127.0.0.1", 0))
    client = lt.run(start_node(ca, tmp_path / "app", "app", upstreams=(db,)))
    mesh = TcpMesh(lt, client, blue, green, apps)
    mesh.install(blue, snapshot(1, "db-blue", []))
    mesh.install(green, snapshot(1, "db-green", []))
    mesh.set_route(route(("db-blue", 100)))
    try:
        yield mesh
    finally:
        async def shutdown() -> None:
            for node in (client, blue, green):
                if node.listener is not None:
                    node.listener.close()
                await node.tcp.drain(0.5)
            for app in apps.values():
                app.server.close()
            await asyncio.sleep(0.05)

        lt.run(shutdown())
        lt.stop()


class TestRelay:
    def test_bytes_cross_both_ways_through_the_route(self, tcp_mesh: TcpMesh) -> None:
        """A connection to the db upstream reaches the route's backend and flows both ways."""
        with tcp_mesh.connect() as sock:
            assert ask(sock, "one") == "blue:one"
            assert ask(sock, "two") == "blue:two"

    def test_half_close_lets_the_answer_come_back(self, tcp_mesh: TcpMesh) -> None:
        """After the client shuts down its sending side, the app still gets to answer."""
        with tcp_mesh.connect() as sock:
            sock.sendall(b"last\n")
            sock.shutdown(socket.SHUT_WR)
            assert read_line(sock) == "blue:last"
            assert read_line(sock) == "blue:bye"
            assert closed_within(sock, 5)

    def test_bulk_data_arrives_intact_under_backpressure(self, tcp_mesh: TcpMesh) -> None:
        """24 MiB there and back (read slowly at first) arrive byte for byte."""
        size = 24 * 1024 * 1024
        payload = bytes(range(256)) * (size // 256)
        with tcp_mesh.connect() as sock:
            sock.sendall(f"bulk {size}\n".encode())
            sock.sendall(payload)
            time.sleep(0.3)  # let every buffer on the way fill up
            digest = read_line(sock)
            received = bytearray()
            while len(received) < size:
                chunk = sock.recv(1 << 20)
                assert chunk, "closed early"
                received += chunk
        assert digest == hashlib.sha256(payload).hexdigest()
        assert hashlib.sha256(received).hexdigest() == digest

    def test_metrics_count_connections_and_bytes(self, tcp_mesh: TcpMesh) -> None:
        """The client sidecar counts the connection and its bytes under the backend."""
        labels = 'direction="outbound",src_service="app",dst_service="db-blue"'
        with tcp_mesh.connect() as sock:
            assert ask(sock, "count") == "blue:count"
            open_now = f"gossamer_tcp_relay_connections_open{{{labels}}} 1"
            assert open_now in tcp_mesh.metrics(tcp_mesh.client)
        closed = f"gossamer_tcp_relay_connections_open{{{labels}}} 0"
        assert wait_until(lambda: closed in tcp_mesh.metrics(tcp_mesh.client))
        text = tcp_mesh.metrics(tcp_mesh.client)
        assert f"gossamer_tcp_relay_connections_total{{{labels}}} 1" in text
        assert f"gossamer_tcp_relay_received_bytes_total{{{labels}}} 6" in text
        # "blue:count\n", then "blue:bye\n" once the client's EOF reached the app
        assert f"gossamer_tcp_relay_sent_bytes_total{{{labels}}} 20" in text
        assert 'dst_service="db"}' not in text  # nothing is counted before routing
        inbound = 'direction="inbound",src_service="app",dst_service="db-blue"'
        assert f"gossamer_tcp_relay_connections_total{{{inbound}}} 1" in tcp_mesh.metrics(
            tcp_mesh.blue
        )

    def test_finished_relays_are_freed_without_the_cyclic_gc(self, tcp_mesh: TcpMesh) -> None:
        """A finished relay's ends, buffers and TLS state go back at once, not when a rare
        cyclic GC pass finds them."""

        def traffic() -> None:
            for word in ("one", "two"):
                with tcp_mesh.connect() as sock:
                    assert ask(sock, word) == f"blue:{word}"
            nodes = (tcp_mesh.client, tcp_mesh.blue)
            labels = (
                'gossamer_tcp_relay_connections_open{direction="%s",src_service="app",'
                'dst_service="db-blue"} 0'
            )
            assert wait_until(lambda: labels % "outbound" in tcp_mesh.metrics(nodes[0]))
            assert wait_until(lambda: labels % "inbound" in tcp_mesh.metrics(nodes[1]))
            time.sleep(0.1)

        garbage = cyclic_garbage(traffic)
        assert not garbage, dict(garbage)

    def test_wrong_backend_identity_is_refused(self, tcp_mesh: TcpMesh) -> None:
        """A backend that does not carry the expected SPIFFE ID gets no bytes."""
        tcp_mesh.set_route(
            route(("db-blue", 100)), identity_of_blue=identity("someone-else").uri
        )
        with tcp_mesh.connect() as sock:
            assert refused(sock, b"secret\n")
        assert tcp_mesh.apps["blue"].received == 0
        assert 'cause="upstream-identity-mismatch"' in tcp_mesh.metrics(tcp_mesh.client)

    def test_inbound_refuses_tcp_when_no_port_is_tcp(self, tcp_mesh: TcpMesh) -> None:
        """A destination whose ports are all HTTP does not relay opaque TCP to its app."""
        tcp_mesh.install(tcp_mesh.blue, snapshot(2, "db-blue", [], inbound_tcp=False))
        with tcp_mesh.connect() as sock:
            assert refused(sock, b"hello\n")
        assert tcp_mesh.apps["blue"].connections == 0
        assert 'cause="tcp-not-allowed"' in tcp_mesh.metrics(tcp_mesh.blue)

    def test_a_service_with_http_and_tcp_ports_opens_no_raw_tunnel_to_its_app(
        self, tcp_mesh: TcpMesh
    ) -> None:
        """With one app address, a peer offering ALPN gossamer-tcp to a service that also
        has an HTTP port would reach that HTTP app with raw bytes, skipping the identity
        header's stripping (issue 11, finding 2): refused unless the sidecar has a TCP app
        address of its own."""
        snap = snapshot(2, "db-blue", [])
        snap["inbound"]["ports"] = [{"port": 80, "protocol": "http"},
                                    {"port": 5432, "protocol": "tcp"}]  # fmt: skip
        tcp_mesh.install(tcp_mesh.blue, snap)
        with tcp_mesh.connect() as sock:
            assert refused(sock, b"GET / HTTP/1.1\r\nx-gossamer-peer-identity: forged\r\n\r\n")
        assert tcp_mesh.apps["blue"].connections == 0
        assert 'cause="tcp-not-allowed"' in tcp_mesh.metrics(tcp_mesh.blue)

    def test_service_without_endpoints_refuses_at_once(self, tcp_mesh: TcpMesh) -> None:
        """No route and no endpoints of its own: the connection is closed, the cause counted."""
        tcp_mesh.set_route(None)
        with tcp_mesh.connect() as sock:
            assert refused(sock, b"anyone?\n")
        text = tcp_mesh.metrics(tcp_mesh.client)
        assert 'cause="no-healthy-endpoints"' in text
        assert ('gossamer_tcp_relay_connect_failures_total{direction="outbound",'
                'src_service="app",dst_service="db"} 1') in text

    def test_sidecar_drain_closes_what_is_left_at_its_deadline(
        self, tcp_mesh: TcpMesh
    ) -> None:
        """On shutdown the listener stops at once; open relays end at the drain deadline."""
        with tcp_mesh.connect() as sock:
            assert ask(sock, "x") == "blue:x"
            started = time.monotonic()
            tcp_mesh.lt.run(tcp_mesh.client.tcp.drain(0.3))
            assert closed_within(sock, 5)
            assert time.monotonic() - started < 2.0
        with pytest.raises(OSError):
            tcp_mesh.connect()


class TestRouteSwitch:
    def test_new_connections_go_to_the_new_backend_at_once(self, tcp_mesh: TcpMesh) -> None:
        """Right after the route changes, a new connection lands on the new backend."""
        tcp_mesh.set_route(route(("db-green", 100)))
        with tcp_mesh.connect() as sock:
            assert ask(sock, "hi") == "green:hi"

    def test_old_connections_flow_until_the_drain_deadline(self, tcp_mesh: TcpMesh) -> None:
        """An open connection keeps working on the old backend, then closes at the deadline."""
        with tcp_mesh.connect() as old:
            assert ask(old, "before") == "blue:before"
            switched = time.monotonic()
            tcp_mesh.set_route(route(("db-green", 100)))
            assert ask(old, "during") == "blue:during"
            assert closed_within(old, 5)
            elapsed = time.monotonic() - switched
        assert DRAIN_MS / 1000 - 0.1 <= elapsed <= DRAIN_MS / 1000 + 1.0
        text = tcp_mesh.metrics(tcp_mesh.client)
        assert ('gossamer_tcp_relay_drained_total{direction="outbound",src_service="app",'
                'dst_service="db-blue"} 1') in text

    def test_route_back_before_the_deadline_keeps_the_connection(
        self, tcp_mesh: TcpMesh
    ) -> None:
        """Switching back before the deadline cancels the drain of the connection."""
        with tcp_mesh.connect() as sock:
            assert ask(sock, "a") == "blue:a"
            tcp_mesh.set_route(route(("db-green", 100)))
            tcp_mesh.set_route(route(("db-blue", 100)))
            time.sleep(DRAIN_MS / 1000 + 0.4)
            assert ask(sock, "b") == "blue:b"

    def test_weight_change_that_keeps_the_backend_does_not_drain(
        self, tcp_mesh: TcpMesh
    ) -> None:
        """A connection whose backend keeps a weight above 0 is left alone."""
        with tcp_mesh.connect() as sock:
            assert ask(sock, "a") == "blue:a"
            tcp_mesh.set_route(route(("db-blue", 50), ("db-green", 50)))
            time.sleep(DRAIN_MS / 1000 + 0.4)
            assert ask(sock, "b") == "blue:b"

    def test_weighted_split_sends_new_connections_to_both(self, tcp_mesh: TcpMesh) -> None:
        """A 50/50 route spreads new connections over both backends."""
        tcp_mesh.set_route(route(("db-blue", 50), ("db-green", 50)))
        seen = set()
        for _ in range(40):
            with tcp_mesh.connect() as sock:
                seen.add(ask(sock, "x").split(":")[0])
            if seen == {"blue", "green"}:
                break
        assert seen == {"blue", "green"}

    def test_removing_the_route_drains_with_the_old_deadline(self, tcp_mesh: TcpMesh) -> None:
        """With the route gone, connections to its backends close after its drain time."""
        with tcp_mesh.connect() as old:
            assert ask(old, "x") == "blue:x"
            tcp_mesh.set_route(None)
            assert ask(old, "y") == "blue:y"
            assert closed_within(old, 5)


def split_hello_session(tcp_mesh: TcpMesh, alpn: str, first: bytes) -> bytes:
    """Connect to blue's inbound port as a mesh client whose ClientHello arrives in two
    pieces, then send ``first`` and return the first bytes of the answer."""
    assert tcp_mesh.blue.inbound is not None
    ctx = tcp_mesh.client.creds.client_context
    ctx.set_alpn_protocols([alpn])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="db-blue.default.svc")
    with socket.create_connection(("127.0.0.1", tcp_mesh.blue.inbound.port), timeout=5) as sock:
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        sock.sendall(hello[:40])
        time.sleep(0.2)
        sock.sendall(hello[40:])
        for _ in range(20):
            incoming.write(sock.recv(65536))
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
        assert tls.selected_alpn_protocol() == alpn
        tls.write(first)
        sock.sendall(outgoing.read())
        while True:
            incoming.write(sock.recv(65536))
            try:
                return tls.read(4096)
            except ssl.SSLWantReadError:
                continue


class TestInboundHello:
    def test_hello_split_across_segments_still_reaches_the_relay(
        self, tcp_mesh: TcpMesh
    ) -> None:
        """A ClientHello offering gossamer-tcp that arrives in pieces is still relayed."""
        assert split_hello_session(tcp_mesh, "gossamer-tcp", b"piece\n") == b"blue:piece\n"

    def test_split_http_hello_goes_back_to_the_http_path(self, tcp_mesh: TcpMesh) -> None:
        """A split ClientHello offering http/1.1 is handed back to the HTTP inbound path."""
        answer = split_hello_session(
            tcp_mesh, "http/1.1", b"GET / HTTP/1.1\r\nHost: db-blue\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 ")
