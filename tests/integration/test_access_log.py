"""Access logs (issue 14) over real sockets and real mTLS: one line per request in each
sidecar, for HTTP/1.1 and gRPC alike, with the fields Envoy users look for; the proxy's own
errors named; a workload whose config has no access log writes nothing.

Sidecars run in one background loop: ``web`` (the caller, no app), ``orders`` (an HTTP/1.1 app
that answers with what it received) and ``greeter`` (a grpcio server). Each logs to its own
file as its snapshot says (the control plane's resolution of the MeshConfig and the Services is
covered by ``tests/unit/proxy/test_access_log.py``).
"""

from __future__ import annotations

import asyncio
import json
import socket
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

WEB = identity("web").uri
ORDERS = identity("orders").uri


def _snapshot(
    source: str,
    services: dict[str, tuple[int, str, list[int]]],
    log: Path | None,
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "version": 1, "trust_domain": "gossamer.local",
        "proxy": {"service": source, "namespace": "default", "identity": identity(source).uri},
        "inbound": {"mtls": "STRICT", "ports": ports or []},
        "access_log": None if log is None else {
            "format": "json", "template": "{status}", "path": str(log)},
        "outbound": {"services": [
            {"name": name, "namespace": "default", "identity": identity(name).uri,
             "protocol": protocol, "ports": [{"port": port, "protocol": protocol}],
             "endpoints": [{"address": "127.0.0.1", "port": e, "labels": {}} for e in ends]}
            for name, (port, protocol, ends) in services.items()], "unknown": []},
    }  # fmt: skip


@dataclass
class Mesh:
    lt: LoopThread
    web: Sidecar
    servers: dict[str, Sidecar]
    logs: dict[str, Path]
    app: Address

    def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self.web.outbound is not None
        with socket.create_connection(("127.0.0.1", self.web.outbound.port), timeout=10) as s:
            s.sendall(raw)
            return recv_response(s)

    def lines(self, name: str, count: int, **match: object) -> list[dict[str, Any]]:
        """The lines of ``name``'s log matching ``match``, once there are ``count`` of them
        (the writer flushes every 0.1 s)."""
        deadline = time.monotonic() + 5
        while True:
            path = self.logs[name]
            found = [json.loads(line) for line in path.read_bytes().splitlines()] if (
                path.exists()) else []  # fmt: skip
            found = [f for f in found if all(f.get(k) == v for k, v in match.items())]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


class CutShort(asyncio.Protocol):
    """An app that promises 100 bytes of body, sends 10 and closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            self.transport.close()


def start_grpc_app() -> tuple[grpc.Server, int]:
    def hello(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"hello " + request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Greeter", {"Hello": grpc.unary_unary_rpc_method_handler(hello)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("access-log")
    lt = LoopThread()
    ca = CertificateAuthority.load_or_create(tmp / "ca")
    grpc_server, grpc_port = start_grpc_app()

    async def apps() -> tuple[asyncio.Server, asyncio.Server, asyncio.Server]:
        loop = asyncio.get_running_loop()
        return (await loop.create_server(RecordingApp, "127.0.0.1", 0),
                await loop.create_server(CutShort, "127.0.0.1", 0),
                await loop.create_server(Echo, "127.0.0.1", 0))  # fmt: skip

    app_server, cut_server, echo_server = lt.run(apps())
    app = Address("127.0.0.1", app_server.sockets[0].getsockname()[1])

    def start(name: str, **kw: Any) -> Sidecar:
        return lt.run(start_sidecar(ca, tmp / name, name, **kw))  # type: ignore[no-any-return]

    orders = start("orders", app=app)
    greeter = start("greeter", app=Address("127.0.0.1", grpc_port))
    cutter = start("cutter", app=Address("127.0.0.1", cut_server.sockets[0].getsockname()[1]))
    db = start("db", app=None,
               tcp_app=Address("127.0.0.1", echo_server.sockets[0].getsockname()[1]))  # fmt: skip
    web = start("web", app=None)
    logs = {name: tmp / f"{name}.log" for name in ("web", "orders", "cutter", "db")}
    services = {
        "orders": (80, "http", [orders.inbound.port]),  # type: ignore[union-attr]
        "greeter": (80, "grpc", [greeter.inbound.port]),  # type: ignore[union-attr]
        "drained": (80, "http", []),
        "cutter": (80, "http", [cutter.inbound.port]),  # type: ignore[union-attr]
        "db": (5432, "tcp", [db.inbound.port]),  # type: ignore[union-attr]
    }

    async def install() -> None:
        web.state.apply_snapshot(1, _snapshot("web", services, logs["web"]))
        orders.state.apply_snapshot(1, _snapshot("orders", {}, logs["orders"]))
        greeter.state.apply_snapshot(1, _snapshot("greeter", {}, None))
        cutter.state.apply_snapshot(1, _snapshot("cutter", {}, logs["cutter"]))
        db.state.apply_snapshot(1, _snapshot("db", {}, logs["db"],
                                             [{"port": 5432, "protocol": "tcp"}]))  # fmt: skip

    lt.run(install())
    servers = {"orders": orders, "greeter": greeter, "cutter": cutter, "db": db}
    mesh = Mesh(lt, web, servers, logs, app)
    try:
        yield mesh
    finally:

        async def shutdown() -> None:
            for sidecar in (web, orders, greeter, cutter, db):
                await sidecar.close()
            for server in (app_server, cut_server, echo_server):
                server.close()

        lt.run(shutdown())
        lt.stop()
        grpc_server.stop(0)


def test_one_line_per_request_in_each_sidecar_with_the_fields_that_matter(mesh: Mesh) -> None:
    status, _, _ = mesh.request(
        b"GET http://orders/orders/42?full=1 HTTP/1.1\r\nHost: orders\r\n"
        b"user-agent: shop-cli/2\r\nx-request-id: rid-42\r\n\r\n"
    )
    assert status == 200
    (out,) = mesh.lines("web", 1, request_id="rid-42")
    (inn,) = mesh.lines("orders", 1, request_id="rid-42")
    assert out["direction"] == "outbound" and inn["direction"] == "inbound"
    for line in (out, inn):
        assert (line["method"], line["path"], line["status"], line["protocol"]) == (
            "GET", "/orders/42?full=1", 200, "HTTP/1.1")  # fmt: skip
        assert line["user_agent"] == "shop-cli/2" and line["error"] is None
        assert line["response_bytes"] > 20 and line["duration_ms"] > 0
    assert out["response_bytes"] == inn["response_bytes"]
    orders_port = mesh.servers["orders"].inbound.port  # type: ignore[union-attr]
    assert (out["service"], out["peer"], out["upstream"]) == (
        "orders", ORDERS, f"127.0.0.1:{orders_port}")  # fmt: skip
    assert (inn["service"], inn["peer"], inn["upstream"]) == (
        "orders", WEB, f"127.0.0.1:{mesh.app.port}")  # fmt: skip
    assert out["time"].endswith("Z") and inn["time"] >= out["time"]


def test_the_proxys_own_errors_are_named(mesh: Mesh) -> None:
    status, headers, _ = mesh.request(b"GET http://drained/ HTTP/1.1\r\nHost: drained\r\n"
                                      b"x-request-id: rid-none\r\n\r\n")  # fmt: skip
    assert (status, headers["x-gossamer-error"]) == (503, "no-healthy-endpoints")
    (line,) = mesh.lines("web", 1, request_id="rid-none")
    assert (line["status"], line["error"], line["service"]) == (
        503, "no-healthy-endpoints", "drained")  # fmt: skip
    assert line["response_bytes"] > 0  # the body the proxy wrote


def test_a_response_cut_short_is_logged_too(mesh: Mesh) -> None:
    """The app closes mid-body: the sidecar can only cut the response, and the request is
    logged with the cause. Before: a cut response never completed its stages (no line, no
    audit record, no span)."""
    assert mesh.web.outbound is not None
    with socket.create_connection(("127.0.0.1", mesh.web.outbound.port), timeout=10) as s:
        s.sendall(b"GET http://cutter/ HTTP/1.1\r\nHost: cutter\r\nx-request-id: rid-cut\r\n\r\n")
        s.settimeout(5)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 200") and len(got.partition(b"\r\n\r\n")[2]) < 100
    (line,) = mesh.lines("cutter", 1, request_id="rid-cut")
    assert (line["direction"], line["status"], line["error"]) == ("inbound", 502, "upstream-reset")
    assert line["response_bytes"] == 10


def test_grpc_calls_are_logged_as_http2_and_a_workload_without_a_log_writes_none(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_proxy_env(monkeypatch, mesh.web.outbound.port)  # type: ignore[union-attr]
    with grpc.insecure_channel("greeter:80") as channel:
        call = channel.unary_unary("/test.Greeter/Hello")
        assert call(b"log me", timeout=10, metadata=(("x-request-id", "rid-grpc"),)) == (
            b"hello log me")  # fmt: skip
    (line,) = mesh.lines("web", 1, request_id="rid-grpc")
    assert (line["protocol"], line["method"], line["path"], line["status"]) == (
        "HTTP/2", "POST", "/test.Greeter/Hello", 200)  # fmt: skip
    assert (line["request_bytes"], line["response_bytes"]) == (5 + 6, 5 + 12)
    assert mesh.servers["greeter"].state.access_log is None  # its config has none


def test_tcp_connections_are_logged_once_closed(mesh: Mesh) -> None:
    """A TCP connection (a CONNECT tunnel to db's tcp port) is one line in each sidecar, with
    the bytes each way and the peer's identity."""
    assert mesh.web.outbound is not None
    with socket.create_connection(("127.0.0.1", mesh.web.outbound.port), timeout=10) as s:
        s.sendall(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n")
        assert recv_response(s, head_request=True)[0] == 200
        s.sendall(b"hello")
        s.settimeout(5)
        assert s.recv(100) == b"echo:hello"
    (out,) = mesh.lines("web", 1, protocol="tcp")
    (inn,) = mesh.lines("db", 1, protocol="tcp")
    assert (out["direction"], out["service"], out["peer"], out["authority"]) == (
        "outbound", "db", identity("db").uri, "db.default")  # fmt: skip
    assert (inn["direction"], inn["service"], inn["peer"]) == ("inbound", "db", WEB)
    for line in (out, inn):
        assert (line["request_bytes"], line["response_bytes"]) == (5, 10)
        assert line["status"] == 0 and line["duration_ms"] > 0 and line["error"] is None


def test_lines_are_counted_on_metrics(mesh: Mesh) -> None:
    mesh.request(b"GET http://orders/count HTTP/1.1\r\nHost: orders\r\nx-request-id: rid-c\r\n\r\n")
    mesh.lines("web", 1, request_id="rid-c")
    text = mesh.web.state.render_metrics().decode()
    family = 'gossamer_access_log_lines_total{outcome="written"}'
    written = [line for line in text.splitlines() if line.startswith(family)]
    assert len(written) == 1 and int(written[0].split()[-1]) >= 1
    assert 'gossamer_access_log_lines_total{outcome="dropped_queue_full"} 0' in text
