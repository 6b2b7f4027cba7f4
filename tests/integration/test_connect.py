"""CONNECT on the outbound port (issue 15), with real sidecars, sockets, mTLS and a grpcio client.

Four sidecars run in one background loop: ``frontend`` (the caller, no app), ``catalog`` (an
HTTP app that answers with what it received), ``greeter`` (a grpcio server) and ``db`` (a TCP
echo app, its port declared ``tcp``). The frontend's route table is installed directly (as a
control-plane snapshot). Each test opens a tunnel on the frontend's outbound port as a client
behind ``http_proxy`` would, and checks where its bytes went and what the proxy answered.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from gossamer.control.ca import CertificateAuthority
from gossamer.proxy.process.settings import Address
from tests.apps.inprocess import Echo, RecordingApp
from tests.sidecar_harness import (
    LoopThread,
    Sidecar,
    app_proxy_env,
    identity,
    recv_response,
    start_sidecar,
)

FORGED = "spiffe://gossamer.local/ns/default/sa/admin"


# --------------------------------------------------------------------------- apps


def start_grpc_app() -> tuple[grpc.Server, int, list[str]]:
    peers: list[str] = []

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        peers.append(dict(context.invocation_metadata()).get("x-gossamer-peer-identity", ""))
        return b"hello " + request

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(request)):
            yield b"item%d" % i

    def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        time.sleep(float(request))
        return b"late"

    handler = grpc.method_handlers_generic_handler(
        "test.Greeter",
        {
            "Hello": grpc.unary_unary_rpc_method_handler(unary),
            "Count": grpc.unary_stream_rpc_method_handler(stream),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, peers


# --------------------------------------------------------------------------- the mesh


@dataclass
class Mesh:
    lt: LoopThread
    frontend: Sidecar
    sidecars: list[Sidecar]
    echo_port: int
    app_port: int  # the recording HTTP app (catalog's)
    grpc_peers: list[str]
    snapshot: dict[str, Any]

    @property
    def port(self) -> int:
        assert self.frontend.outbound is not None
        return self.frontend.outbound.port

    def connect(self, target: str, extra: bytes = b"") -> tuple[socket.socket, int, dict[str, str]]:
        """Open a tunnel: the socket, the CONNECT answer's status and headers."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.sendall(b"CONNECT %b HTTP/1.1\r\nHost: %b\r\n\r\n%b" % (
            target.encode(), target.encode(), extra))  # fmt: skip
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            if not chunk:
                break
            head += chunk
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1]) if lines[0] else 0
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        return sock, status, {k.lower(): v for k, v in headers.items()}

    def install(self, **egress: Any) -> None:
        snap = json.loads(json.dumps(self.snapshot))
        snap["version"] += 1
        self.snapshot = snap
        if egress:
            snap["outbound"]["egress"] = egress

        async def apply() -> None:
            self.frontend.state.apply_snapshot(snap["version"], snap)

        self.lt.run(apply())

    def errors(self) -> str:
        return self.frontend.state.metrics.render().decode()


def _service(name: str, port: int, protocol: str, endpoint_ports: list[int]) -> dict[str, Any]:
    return {
        "name": name, "namespace": "default", "identity": identity(name).uri,
        "protocol": protocol, "ports": [{"port": port, "protocol": protocol}],
        "endpoints": [{"address": "127.0.0.1", "port": p, "labels": {}} for p in endpoint_ports],
    }  # fmt: skip


def _own_snapshot(service: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "version": 1, "trust_domain": "gossamer.local",
        "proxy": {"service": service, "namespace": "default", "identity": identity(service).uri},
        "inbound": {"mtls": "STRICT", "ports": ports},
        "outbound": {"services": [], "unknown": []},
    }  # fmt: skip


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("connect")
    lt = LoopThread()
    ca = CertificateAuthority.load_or_create(tmp / "ca")
    grpc_server, grpc_port, peers = start_grpc_app()

    async def servers() -> tuple[asyncio.Server, asyncio.Server]:
        loop = asyncio.get_running_loop()
        app = await loop.create_server(RecordingApp, "127.0.0.1", 0)
        echo = await loop.create_server(Echo, "127.0.0.1", 0)
        return app, echo

    app, echo = lt.run(servers())
    app_port = app.sockets[0].getsockname()[1]
    echo_port = echo.sockets[0].getsockname()[1]

    def start(name: str, **kw: Any) -> Sidecar:
        return lt.run(start_sidecar(ca, tmp / name, name, **kw))  # type: ignore[no-any-return]

    catalog = start("catalog", app=Address("127.0.0.1", app_port))
    greeter = start("greeter", app=Address("127.0.0.1", grpc_port))
    db = start("db", app=None, tcp_app=Address("127.0.0.1", echo_port))
    frontend = start("frontend", app=None)
    ports = {s: s.inbound.port for s in (catalog, greeter, db)}  # type: ignore[union-attr]
    snap = _own_snapshot("frontend", [])
    snap["outbound"] = {
        "services": [
            _service("catalog", 80, "http", [ports[catalog]]),
            _service("greeter", 80, "grpc", [ports[greeter]]),
            _service("db", 5432, "tcp", [ports[db]]),
            _service("empty", 5432, "tcp", []),
        ],
        "unknown": ["nosuch.default"],
    }

    async def install() -> None:
        frontend.state.apply_snapshot(1, snap)
        db.state.apply_snapshot(1, _own_snapshot("db", [{"port": 5432, "protocol": "tcp"}]))

    lt.run(install())
    mesh = Mesh(lt, frontend, [catalog, greeter, db, frontend], echo_port, app_port, peers, snap)
    try:
        yield mesh
    finally:

        async def shutdown() -> None:
            for sc in mesh.sidecars:
                await sc.close()
            app.close()
            echo.close()
            await asyncio.sleep(0.05)

        lt.run(shutdown())
        lt.stop()
        grpc_server.stop(0)


@pytest.fixture
def proxied(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> Mesh:
    """The environment an app started by ``gossamer run`` has: ``http_proxy`` at its sidecar
    (grpcio reads it when a channel is made), loopback bypassed."""
    app_proxy_env(monkeypatch, mesh.port)
    return mesh


# --------------------------------------------------------------------------- gRPC and HTTP


def test_an_unchanged_grpc_client_tunnels_to_the_service(proxied: Mesh) -> None:
    """grpcio behind http_proxy sends CONNECT greeter:80: the calls go through the HTTP/2
    pipeline to the greeter over mTLS, which sees the caller's identity."""
    proxied.grpc_peers.clear()
    with grpc.insecure_channel("greeter:80") as channel:
        hello = channel.unary_unary("/test.Greeter/Hello")
        assert hello(b"mesh", timeout=10) == b"hello mesh"
        count = channel.unary_stream("/test.Greeter/Count")
        assert list(count(b"50", timeout=10)) == [b"item%d" % i for i in range(50)]
        assert hello(b"again", timeout=10) == b"hello again"  # the same tunnel
    assert proxied.grpc_peers == [identity("frontend").uri] * 2


def test_a_grpc_deadline_holds_through_the_tunnel(proxied: Mesh) -> None:
    with grpc.insecure_channel("greeter:80") as channel:
        slow = channel.unary_unary("/test.Greeter/Slow")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            slow(b"3", timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2.5


def test_a_grpc_call_to_no_service_fails_with_the_proxy_status(proxied: Mesh) -> None:
    with grpc.insecure_channel("nosuch:80") as channel, pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/test.Greeter/Hello")(b"x", timeout=5)
    # A CONNECT to no service is refused with its cause: grpcio reports the proxy's status.
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "404" in (caught.value.details() or "")


def test_http1_inside_a_tunnel_goes_to_the_connect_authority(mesh: Mesh) -> None:
    """Each request in the tunnel goes to the CONNECT authority through the pipeline (Host
    aside), with the forged identity stripped and the caller's set by the catalog sidecar;
    the tunnel serves several requests (keep-alive)."""
    sock, status, _ = mesh.connect("catalog:80")
    with sock:
        assert status == 200
        for path in (b"/first", b"/second"):
            sock.sendall(b"GET %b HTTP/1.1\r\nHost: elsewhere.example\r\n"
                         b"x-gossamer-peer-identity: %b\r\n\r\n" % (path, FORGED.encode()))
            code, _headers, body = recv_response(sock)
            assert code == 200
            seen = json.loads(body)
            assert seen["line"] == f"GET {path.decode()} HTTP/1.1"
            peers = [v for k, v in seen["headers"] if k.lower() == "x-gossamer-peer-identity"]
            assert peers == [identity("frontend").uri]


def test_bytes_sent_with_the_connect_are_served_after_it(mesh: Mesh) -> None:
    sock, status, _ = mesh.connect("catalog:80", b"GET /early HTTP/1.1\r\nHost: catalog\r\n\r\n")
    with sock:
        assert status == 200
        code, _headers, body = recv_response(sock)
        assert code == 200 and json.loads(body)["line"] == "GET /early HTTP/1.1"


def test_anything_else_in_a_tunnel_is_answered_as_a_malformed_request(mesh: Mesh) -> None:
    """Bytes that are neither HTTP/2, HTTP/1.1 nor TLS get the answer a direct connection
    would: 400 bad-request, nothing forwarded."""
    sock, status, _ = mesh.connect("catalog:80")
    with sock:
        assert status == 200
        sock.sendall(b"\x00\x01 not a protocol\r\n\r\n")
        code, headers, _ = recv_response(sock)
        assert (code, headers["x-gossamer-error"]) == (400, "bad-request")


def test_tls_into_a_tunnel_to_an_http_port_gets_an_alert(mesh: Mesh) -> None:
    """An https:// client tunnelling to a mesh service's HTTP port: a TLS alert (the mesh
    encrypts; the app should use http://), counted, never a hang."""
    sock, status, _ = mesh.connect("catalog:443")
    assert status == 200
    context = ssl.create_default_context()
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
        context.wrap_socket(sock, server_hostname="catalog")
    sock.close()
    assert 'cause="tls-in-http-tunnel"' in mesh.errors()


# --------------------------------------------------------------------------- TCP and egress


def test_a_tunnel_to_a_tcp_port_relays_over_the_tcp_path(mesh: Mesh) -> None:
    """CONNECT db:5432 (a tcp port): 200 once the mTLS connection to db's sidecar is up,
    then bytes both ways, counted as db's TCP traffic."""
    sock, status, _ = mesh.connect("db:5432", b"early,")
    with sock:
        assert status == 200
        sock.sendall(b"ping")
        got = b""
        while b"ping" not in got:
            chunk = sock.recv(100)
            assert chunk, got
            got += chunk
        assert got.startswith(b"echo:early,")
    assert 'dst_service="db"' in mesh.errors()


def test_a_tunnel_out_of_the_mesh_follows_the_egress_policy(mesh: Mesh) -> None:
    """ALLOW_ANY: a host outside the mesh is tunnelled to (counted under egress:<host>);
    REGISTRY_ONLY without an Egress for it: 403 egress-denied; with one: tunnelled."""
    target = f"127.0.0.1:{mesh.echo_port}"
    try:
        sock, status, _ = mesh.connect(target)
        with sock:
            assert status == 200
            sock.sendall(b"out")
            assert sock.recv(100) == b"echo:out"
        assert 'dst_service="egress:127.0.0.1"' in mesh.errors()
        mesh.install(mode="REGISTRY_ONLY", hosts=[{"host": "10.0.0.1", "ports": []}])
        sock, status, headers = mesh.connect(target)
        sock.close()
        assert (status, headers["x-gossamer-error"]) == (403, "egress-denied")
        mesh.install(mode="REGISTRY_ONLY",
                     hosts=[{"host": "127.0.0.1", "ports": [mesh.echo_port]}])  # fmt: skip
        sock, status, _ = mesh.connect(target)
        sock.close()
        assert status == 200
    finally:
        mesh.install(mode="ALLOW_ANY", hosts=[])


def test_a_tunnel_to_an_egress_host_goes_to_its_endpoints(mesh: Mesh) -> None:
    """An Egress with endpoints: a CONNECT to its host's name reaches the listed address
    (no DNS for the name), the first that accepts."""
    dead = ("127.0.0.1", 1)
    try:
        mesh.install(mode="REGISTRY_ONLY", hosts=[{
            "host": "api.partner.example", "ports": [443],
            "endpoints": [{"address": dead[0], "port": dead[1]},
                          {"address": "127.0.0.1", "port": mesh.echo_port}],
        }])  # fmt: skip
        sock, status, _ = mesh.connect("api.partner.example:443")
        with sock:
            assert status == 200
            sock.sendall(b"partner")
            assert sock.recv(100) == b"echo:partner"
        assert 'dst_service="egress:api.partner.example"' in mesh.errors()
        sock, status, headers = mesh.connect("api.partner.example:8443")
        sock.close()
        assert (status, headers["x-gossamer-error"]) == (403, "egress-denied")
        # Plain http:// through the proxy (absolute form) goes to the endpoints too.
        mesh.install(mode="REGISTRY_ONLY", hosts=[{
            "host": "api.partner.example", "ports": [80],
            "endpoints": [{"address": "127.0.0.1", "port": mesh.app_port}],
        }])  # fmt: skip
        with socket.create_connection(("127.0.0.1", mesh.port), timeout=10) as sock:
            sock.sendall(b"GET http://api.partner.example/v1/quote HTTP/1.1\r\n"
                         b"Host: api.partner.example\r\n\r\n")
            code, _, body = recv_response(sock)
        assert code == 200 and json.loads(body)["line"] == "GET /v1/quote HTTP/1.1"
    finally:
        mesh.install(mode="ALLOW_ANY", hosts=[])


@pytest.mark.parametrize(
    ("target", "status", "cause"),
    [
        ("nosuch:80", 404, "unknown-service"),
        ("empty:5432", 503, "no-healthy-endpoints"),
        ("127.0.0.1:1", 502, "connect-failed"),
        ("catalog", 400, "bad-request"),
        ("catalog:0", 400, "bad-request"),
        ("catalog:99999", 400, "bad-request"),
        ("/path", 400, "bad-request"),
        ("user@catalog:80", 400, "bad-request"),
    ],
)
def test_a_refused_tunnel_says_why(mesh: Mesh, target: str, status: int, cause: str) -> None:
    sock, got, headers = mesh.connect(target)
    with sock:
        assert (got, headers.get("x-gossamer-error")) == (status, cause)
        sock.settimeout(5)
        while sock.recv(4096):  # the proxy closes the connection after the answer
            pass


def test_connect_inside_a_tunnel_is_refused(mesh: Mesh) -> None:
    sock, status, _ = mesh.connect("catalog:80")
    with sock:
        assert status == 200
        sock.sendall(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n")
        code, headers, _ = recv_response(sock)
        assert (code, headers["x-gossamer-error"]) == (400, "bad-request")


def test_a_gateway_opens_no_tunnel(tmp_path: Path) -> None:
    """An ingress gateway (a default service) serves clients from outside the mesh: CONNECT
    there would tunnel into any service's TCP port, so it is refused."""
    lt = LoopThread()
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    gateway = lt.run(start_sidecar(ca, tmp_path / "gw", "ingress", None,
                                   default_service="catalog"))  # fmt: skip
    try:
        assert gateway.outbound is not None
        with socket.create_connection(("127.0.0.1", gateway.outbound.port), timeout=10) as sock:
            sock.sendall(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n")
            code, headers, body = recv_response(sock)
        assert (code, headers["x-gossamer-error"]) == (400, "bad-request")
        assert b"gateway" in body
    finally:
        lt.run(gateway.close())
        lt.stop()
