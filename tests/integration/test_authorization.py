"""AuthorizationPolicy enforced by the called service's sidecar (issue 13), over real sockets
and real mTLS, on HTTP/1.1, gRPC and TCP.

Sidecars run in one background loop: two callers with their own identities (``web`` and
``batch``, namespace default), ``orders`` (an HTTP app that answers with what it received),
``greeter`` (a grpcio server) and ``db`` (a TCP echo app, port 5432 declared ``tcp``). Each
server sidecar gets its own snapshot with the policies an AuthorizationPolicy would give it;
the callers reach the servers as apps do (HTTP proxy, CONNECT for gRPC and TCP).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from gossamer.control.ca import CertificateAuthority
from gossamer.proxy.observe.audit_spool import segments
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

WEB = identity("web").uri
BATCH = identity("batch").uri


def rule(principals: list[str] = (), methods: list[str] = (),  # type: ignore[assignment]
         paths: list[str] = (), ports: list[int] = (),  # type: ignore[assignment]
         headers: dict[str, list[str]] | None = None) -> dict[str, Any]:  # fmt: skip
    """One rule in snapshot form (a field left empty matches everything)."""
    empty: list[Any] = []
    return {
        "from": [{"principals": list(principals), "not_principals": empty, "namespaces": empty,
                  "not_namespaces": empty}] if principals else [],
        "to": [{"methods": list(methods), "not_methods": empty, "paths": list(paths),
                "not_paths": empty, "ports": list(ports), "not_ports": empty, "hosts": empty,
                "not_hosts": empty}] if (methods or paths or ports) else [],
        "when": [{"key": f"request.headers[{k}]", "values": v, "not_values": empty}
                 for k, v in (headers or {}).items()],
    }  # fmt: skip


ORDERS_POLICIES = [
    {"name": "default/orders-readers", "action": "ALLOW",
     "rules": [rule([WEB], ["GET"], ["/orders/*"]), rule([BATCH], ["GET"], ["/orders/export"])]},
    {"name": "default/no-suspended", "action": "DENY",
     "rules": [rule(headers={"x-tenant": ["initech"]})]},
    {"name": "default/watch-exports", "action": "AUDIT", "rules": [rule(paths=["*/export"])]},
]  # fmt: skip
GREETER_POLICIES = [
    {"name": "default/greeter-web", "action": "ALLOW", "rules": [rule([WEB])]},
    {"name": "default/audit-greeter", "action": "AUDIT", "rules": [rule()]},
]
DB_POLICIES = [
    {"name": "default/db-web", "action": "ALLOW", "rules": [rule([WEB], ports=[5432])]},
    {"name": "default/audit-db", "action": "AUDIT", "rules": [rule(ports=[5432])]},
]


def start_grpc_app() -> tuple[grpc.Server, int, list[str]]:
    seen: list[str] = []

    def hello(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(dict(context.invocation_metadata()).get("x-gossamer-peer-identity", ""))
        return b"hello " + request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Greeter", {"Hello": grpc.unary_unary_rpc_method_handler(hello)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, seen


class CountingEcho(Echo):
    """The TCP app, counting the connections that reached it."""

    accepted = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        CountingEcho.accepted += 1
        super().connection_made(transport)


@dataclass
class Mesh:
    lt: LoopThread
    callers: dict[str, Sidecar]
    servers: dict[str, Sidecar]
    app: list[RecordingApp] = field(default_factory=list)
    grpc_seen: list[str] = field(default_factory=list)

    def port(self, caller: str) -> int:
        address = self.callers[caller].outbound
        assert address is not None
        return address.port

    def get(
        self, caller: str, method: str, path: str, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        with socket.create_connection(("127.0.0.1", self.port(caller)), timeout=10) as sock:
            sock.sendall(f"{method} http://orders{path} HTTP/1.1\r\nHost: orders\r\n{extra}"
                         "\r\n".encode())  # fmt: skip
            return recv_response(sock)

    def metrics(self, server: str) -> str:
        return self.servers[server].state.metrics.render().decode()


def _snapshot(source: str, services: dict[str, tuple[int, str, int]],
              policies: list[dict[str, Any]] | None = None,
              inbound_ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "version": 1, "trust_domain": "gossamer.local",
        "proxy": {"service": source, "namespace": "default", "identity": identity(source).uri},
        "inbound": {"mtls": "STRICT", "ports": inbound_ports or [],
                    "authorization": policies or []},
        "outbound": {"services": [
            {"name": name, "namespace": "default", "identity": identity(name).uri,
             "protocol": protocol, "ports": [{"port": port, "protocol": protocol}],
             "endpoints": [{"address": "127.0.0.1", "port": endpoint, "labels": {}}]}
            for name, (port, protocol, endpoint) in services.items()], "unknown": []},
    }  # fmt: skip


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("authz")
    lt = LoopThread()
    ca = CertificateAuthority.load_or_create(tmp / "ca")
    grpc_server, grpc_port, grpc_seen = start_grpc_app()
    apps: list[RecordingApp] = []

    def recording() -> RecordingApp:
        app = RecordingApp()
        apps.append(app)
        return app

    async def servers() -> tuple[asyncio.Server, asyncio.Server]:
        loop = asyncio.get_running_loop()
        return (await loop.create_server(recording, "127.0.0.1", 0),
                await loop.create_server(CountingEcho, "127.0.0.1", 0))  # fmt: skip

    http_app, echo = lt.run(servers())

    def start(name: str, **kw: Any) -> Sidecar:
        return lt.run(start_sidecar(ca, tmp / name, name, **kw))  # type: ignore[no-any-return]

    orders = start("orders", app=Address("127.0.0.1", http_app.sockets[0].getsockname()[1]))
    greeter = start("greeter", app=Address("127.0.0.1", grpc_port))
    db = start("db", app=None, tcp_app=Address("127.0.0.1", echo.sockets[0].getsockname()[1]))
    callers = {name: start(name, app=None) for name in ("web", "batch")}
    inbound = {s: s.inbound.port for s in (orders, greeter, db)}  # type: ignore[union-attr]
    services = {"orders": (80, "http", inbound[orders]), "greeter": (80, "grpc", inbound[greeter]),
                "db": (5432, "tcp", inbound[db])}  # fmt: skip

    async def install() -> None:
        orders.state.apply_snapshot(1, _snapshot("orders", {}, ORDERS_POLICIES))
        greeter.state.apply_snapshot(1, _snapshot("greeter", {}, GREETER_POLICIES))
        db.state.apply_snapshot(1, _snapshot("db", {}, DB_POLICIES,
                                             [{"port": 5432, "protocol": "tcp"}]))  # fmt: skip
        for name, caller in callers.items():
            caller.state.apply_snapshot(1, _snapshot(name, services))

    lt.run(install())
    mesh = Mesh(lt, callers, {"orders": orders, "greeter": greeter, "db": db}, apps, grpc_seen)
    try:
        yield mesh
    finally:

        async def shutdown() -> None:
            for sidecar in [*mesh.callers.values(), *mesh.servers.values()]:
                await sidecar.close()
            http_app.close()
            echo.close()

        lt.run(shutdown())
        lt.stop()
        grpc_server.stop(0)


def _app_saw(mesh: Mesh, request_line: str) -> bool:
    return any(request_line in app.seen for app in mesh.app)


# --------------------------------------------------------------------------- HTTP/1.1


def test_allowed_calls_reach_the_app(mesh: Mesh) -> None:
    code, _, body = mesh.get("web", "GET", "/orders/7")
    assert code == 200 and json.loads(body)["line"] == "GET /orders/7 HTTP/1.1"
    code, _, _ = mesh.get("batch", "GET", "/orders/export")
    assert code == 200
    assert _app_saw(mesh, "GET /orders/export HTTP/1.1")


@pytest.mark.parametrize(("caller", "method", "path", "headers", "reason"), [
    ("web", "DELETE", "/orders/7", {}, "no ALLOW AuthorizationPolicy matched "
     "(default/orders-readers)"),
    ("batch", "GET", "/orders/9", {}, "no ALLOW AuthorizationPolicy matched"),
    ("web", "GET", "/orders/8", {"x-tenant": "initech"},
     "denied by AuthorizationPolicy default/no-suspended"),
])  # fmt: skip
def test_refused_calls_get_403_forbidden_and_never_reach_the_app(
    mesh: Mesh, caller: str, method: str, path: str, headers: dict[str, str], reason: str
) -> None:
    code, got, body = mesh.get(caller, method, path, **headers)
    assert (code, got["x-gossamer-error"]) == (403, "forbidden")
    assert reason in body.decode()
    assert not _app_saw(mesh, f"{method} {path} HTTP/1.1")


def test_decisions_are_counted_per_policy(mesh: Mesh) -> None:
    mesh.get("batch", "GET", "/orders/export")
    text = mesh.metrics("orders")
    family = "gossamer_authz_decisions_total"
    assert f'{family}{{policy="default/orders-readers",decision="allow"}}' in text
    assert f'{family}{{policy="default/watch-exports",decision="audit"}}' in text
    assert 'gossamer_proxy_errors_total{direction="inbound",cause="forbidden"}' in text


# --------------------------------------------------------------------------- gRPC


def test_grpc_callers_are_judged_the_same_way(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A denied gRPC call ends PERMISSION_DENIED naming why; the app never sees it."""
    mesh.grpc_seen.clear()
    app_proxy_env(monkeypatch, mesh.port("web"))
    with grpc.insecure_channel("greeter:80") as channel:
        assert channel.unary_unary("/test.Greeter/Hello")(b"web", timeout=10) == b"hello web"
    app_proxy_env(monkeypatch, mesh.port("batch"))
    with grpc.insecure_channel("greeter:80") as channel, pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/test.Greeter/Hello")(b"batch", timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no ALLOW AuthorizationPolicy matched (default/greeter-web)" in (
        caught.value.details() or ""
    )
    assert mesh.grpc_seen == [WEB]


def _audit_records(sidecar: Sidecar) -> list[dict[str, Any]]:
    spool = sidecar.state.audit_spool
    assert spool is not None
    spool.flush()
    return [json.loads(line) for segment in segments(spool.directory)
            for line in segment.read_bytes().splitlines()]  # fmt: skip


def test_audited_calls_are_recorded_on_http1_and_grpc_alike(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One record per audited call, allowed or refused, with the same fields on both
    protocols (the gRPC call's bytes are its framed messages)."""
    code, _, _ = mesh.get("web", "GET", "/orders/export?fmt=csv")
    assert code == 200
    (record,) = [r for r in _audit_records(mesh.servers["orders"])
                 if r["path"] == "/orders/export?fmt=csv"]  # fmt: skip
    assert (record["protocol"], record["method"], record["status"], record["caller"]) == (
        "HTTP/1.1", "GET", 200, WEB)  # fmt: skip
    assert record["audit_policies"] == ["default/watch-exports"] and record["decision"] == "allow"
    before = len(_audit_records(mesh.servers["greeter"]))
    for caller in ("web", "batch"):
        app_proxy_env(monkeypatch, mesh.port(caller))
        with grpc.insecure_channel("greeter:80") as channel:
            try:
                channel.unary_unary("/test.Greeter/Hello")(b"audit me", timeout=10)
            except grpc.RpcError:
                assert caller == "batch"
    records = _audit_records(mesh.servers["greeter"])[before:]
    assert [(r["caller"], r["decision"], r["protocol"], r["method"], r["path"])
            for r in records] == [
        (WEB, "allow", "HTTP/2", "POST", "/test.Greeter/Hello"),
        (BATCH, "deny", "HTTP/2", "POST", "/test.Greeter/Hello"),
    ]  # fmt: skip
    allowed = records[0]
    assert allowed["status"] == 200 and allowed["request_bytes"] == 5 + len(b"audit me")
    assert allowed["response_bytes"] == 5 + len(b"hello audit me")
    assert (allowed["grpc_status"], records[1]["grpc_status"]) == (0, 7)  # PERMISSION_DENIED


# --------------------------------------------------------------------------- TCP


def _tunnel(mesh: Mesh, caller: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", mesh.port(caller)), timeout=10)
    sock.sendall(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n")
    code, _, _ = recv_response(sock, head_request=True)
    assert code == 200
    return sock


def test_tcp_connections_are_refused_before_any_byte_reaches_the_app(mesh: Mesh) -> None:
    """db allows only web on its tcp port: batch's connection is closed by db's sidecar after
    the handshake, and its app never gets a connection; web's is relayed."""
    before = CountingEcho.accepted
    with _tunnel(mesh, "batch") as sock:
        sock.settimeout(5)
        try:
            sock.sendall(b"hello")
            got = sock.recv(100)
        except ConnectionResetError:  # the refusal reaches the client as a reset
            got = b""
        assert got == b""  # cut by the db sidecar, no echo
    time.sleep(0.2)
    assert CountingEcho.accepted == before
    with _tunnel(mesh, "web") as sock:
        sock.sendall(b"hello")
        sock.settimeout(5)
        assert sock.recv(100) == b"echo:hello"
    assert CountingEcho.accepted == before + 1
    text = mesh.metrics("db")
    assert 'gossamer_authz_decisions_total{policy="none",decision="deny"} 1' in text
    assert 'gossamer_authz_decisions_total{policy="default/db-web",decision="allow"} 1' in text


def test_audited_tcp_connections_are_recorded_when_refused_and_when_closed(mesh: Mesh) -> None:
    """The AUDIT policy on db's tcp port: a refused connection is recorded at once, an
    allowed one when it closes, with the bytes each way."""
    db = mesh.servers["db"]

    def denied() -> int:
        return sum(1 for r in _audit_records(db) if (r["caller"], r["decision"]) == (BATCH, "deny"))

    time.sleep(0.3)  # the connections of the tests before have closed and been recorded
    before = denied()
    with _tunnel(mesh, "batch") as sock:  # refused by db's sidecar
        sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            sock.sendall(b"x")
            sock.recv(10)
    with _tunnel(mesh, "web") as sock:
        sock.sendall(b"hello, audit")
        sock.settimeout(5)
        assert sock.recv(100) == b"echo:hello, audit"
    deadline = time.monotonic() + 5
    allowed: list[dict[str, Any]] = []
    while not allowed and time.monotonic() < deadline:
        time.sleep(0.05)
        allowed = [r for r in _audit_records(db) if r["request_bytes"] == 12]
    assert denied() == before + 1
    (record,) = allowed
    assert (record["protocol"], record["caller"], record["decision"]) == ("tcp", WEB, "allow")
    assert record["response_bytes"] == 17 and record["audit_policies"] == ["default/audit-db"]
    assert record["duration_ms"] > 0 and record["path"] == "" and record["status"] == 0
