"""HTTP/2 and gRPC across two real sidecars over real mTLS (ALPN h2), with real peers.

grpcio client → client sidecar outbound (h2c, detected by its preface) → h2 over mTLS →
server sidecar inbound → grpcio server (h2c). Plain HTTP/2 goes the same way to a small h2c
app, driven by a blocking client built on the same nghttp2 session wrapper.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from gossamer.control.ca import CertificateAuthority
from gossamer.proxy.h2 import _ffi, close_h2
from gossamer.proxy.h2.runtime import runtime_for
from gossamer.proxy.h2.session import CLOSED, DATA, HEADERS, H2Session
from gossamer.proxy.settings import Address
from tests.integration.control_helpers import running_control_plane
from tests.process_harness import Processes, wait_ready
from tests.sidecar_harness import LoopThread, Sidecar, identity, snapshot, start_sidecar

PEER = "x-gossamer-peer-identity"
CHUNK = 64 * 1024


# --------------------------------------------------------------------------- gRPC app


@dataclass
class GrpcApp:
    server: grpc.Server
    port: int
    cancelled: threading.Event = field(default_factory=threading.Event)
    yielded: list[int] = field(default_factory=lambda: [0])
    seen_peers: list[str] = field(default_factory=list)


def start_grpc_app() -> GrpcApp:
    app: GrpcApp

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = dict(context.invocation_metadata())
        app.seen_peers.append(str(metadata.get(PEER, "")))
        if request == b"missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such item: missing")
        return b"echo:" + request

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        count, _, size = request.partition(b"x")
        context.add_callback(app.cancelled.set)
        for i in range(int(count)):
            app.yielded[0] = i + 1
            if size:
                yield bytes([i % 256]) * int(size)
            else:
                if int(count) > 10_000:
                    time.sleep(0.01)  # a long stream, for cancellation
                yield b"item%d" % i

    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[("grpc.so_reuseport", 0), ("grpc.http2.bdp_probe", 0)],
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    app = GrpcApp(server, port)
    return app


# --------------------------------------------------------------------------- h2c app


class H2App(asyncio.Protocol):
    """A small h2c server: ``/echo`` answers the request body, trailers and caller identity;
    ``/reset`` starts a response and resets the stream with ENHANCE_YOUR_CALM."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.session = H2Session(
            client=False, settings=[(_ffi.SETTINGS_MAX_CONCURRENT_STREAMS, 1000)]
        )
        self.requests: dict[int, dict[str, Any]] = {}
        self.flush()

    def flush(self) -> None:
        data = self.session.data_to_send()
        self.session.take_events()
        if data:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        for kind, sid, a, b in self.session.receive(data):
            if kind == HEADERS and sid not in self.requests:
                self.requests[sid] = {"headers": dict(a), "body": b"", "trailers": None}
                if b:
                    self.respond(sid)
            elif kind == HEADERS:
                self.requests[sid]["trailers"] = a
                self.respond(sid)
            elif kind == DATA:
                self.requests[sid]["body"] += a
                self.session.consume(sid, len(a))
            elif kind == 3:  # END
                self.respond(sid)
        self.flush()

    def respond(self, sid: int) -> None:
        req = self.requests.pop(sid)
        headers = req["headers"]
        path = headers[b":path"]
        reply = [
            (b":status", b"200"),
            (b"x-seen-peer", headers.get(PEER.encode(), b"-")),
            (b"x-seen-request-id", headers.get(b"x-request-id", b"-")),
        ]
        if path == b"/reset":
            self.session.submit_response(sid, reply, end_stream=False)
            self.session.send_data(sid, b"partial")
            self.flush()
            self.session.reset(sid, 11)
            return
        self.session.submit_response(sid, reply, end_stream=False)
        self.session.send_data(sid, req["body"])
        self.session.end_stream(sid, req["trailers"] or [(b"x-trailer", b"none")])

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.close()


class H2Client:
    """A blocking HTTP/2 prior-knowledge client over one socket."""

    def __init__(self, port: int, *, trickle_preface: bool = False) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.session = H2Session(client=True, settings=[(_ffi.SETTINGS_ENABLE_PUSH, 0)])
        self.responses: dict[int, dict[str, Any]] = {}
        data = self.session.data_to_send()
        if trickle_preface:
            for i in range(0, 24, 5):
                self.sock.sendall(data[i : min(i + 5, 24)])
                time.sleep(0.02)
            data = data[24:]
        self.sock.sendall(data)

    def request(
        self,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        trailers: list[tuple[bytes, bytes]] | None = None,
    ) -> int:
        ends = not body and trailers is None
        sid, _ = self.session.submit_request(headers, end_stream=ends)
        self.responses[sid] = {"headers": [], "body": b"", "code": None}
        if not ends:
            self.session.send_data(sid, body)
            self.session.end_stream(sid, trailers)
        self._send()
        return sid

    def _send(self) -> None:
        data = self.session.data_to_send()
        self._handle(self.session.take_events())
        if data:
            self.sock.sendall(data)

    def _handle(self, events: list[Any]) -> None:
        for kind, sid, a, _b in events:
            resp = self.responses.get(sid)
            if resp is None:
                continue
            if kind == HEADERS:
                resp["headers"].append(dict(a))
            elif kind == DATA:
                resp["body"] += a
                self.session.consume(sid, len(a))
            elif kind == CLOSED:
                resp["code"] = a

    def wait(self, sid: int, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while self.responses[sid]["code"] is None:
            assert time.monotonic() < deadline, "no response in time"
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self._handle(self.session.receive(data))
            self._send()
        return self.responses.pop(sid)

    def close(self) -> None:
        self.sock.close()
        self.session.close()


def get(path: bytes, authority: bytes = b"web") -> list[tuple[bytes, bytes]]:
    return [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", authority),
            (b":path", path)]  # fmt: skip


def post(path: bytes, authority: bytes = b"web") -> list[tuple[bytes, bytes]]:
    return [(b":method", b"POST"), *get(path, authority)[1:]]


# --------------------------------------------------------------------------- the mesh


@dataclass
class Mesh:
    lt: LoopThread
    grpc_app: GrpcApp
    client: Sidecar
    server: Sidecar
    web: Sidecar
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def outbound_port(self) -> int:
        assert self.client.outbound is not None
        return self.client.outbound.port

    def channel(self, authority: str = "catalog") -> grpc.Channel:
        ch = grpc.insecure_channel(
            f"127.0.0.1:{self.outbound_port}",
            options=[
                ("grpc.default_authority", authority),
                ("grpc.enable_http_proxy", 0),
                ("grpc.http2.bdp_probe", 0),
            ],
        )
        self.channels.append(ch)
        return ch

    def unary(self, authority: str = "catalog") -> Any:
        return self.channel(authority).unary_unary("/test.Echo/Unary")

    def stream(self) -> Any:
        return self.channel().unary_stream("/test.Echo/Stream")


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    lt = LoopThread()
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    grpc_app = start_grpc_app()

    async def start_h2_app() -> asyncio.Server:
        return await asyncio.get_running_loop().create_server(H2App, "127.0.0.1", 0)

    h2_server: asyncio.Server = lt.run(start_h2_app())
    h2_port = h2_server.sockets[0].getsockname()[1]
    grpc_addr = Address("127.0.0.1", grpc_app.port)
    server = lt.run(start_sidecar(ca, tmp_path / "s", "catalog", grpc_addr))
    web = lt.run(start_sidecar(ca, tmp_path / "w", "web", Address("127.0.0.1", h2_port)))
    client = lt.run(start_sidecar(ca, tmp_path / "c", "frontend", None))
    assert server.inbound is not None and web.inbound is not None
    snap = snapshot(
        1,
        {"catalog": [server.inbound.port], "web": [web.inbound.port]},
        unknown=["nosuch.default"],
        source="frontend",
    )

    async def install() -> None:
        client.state.apply_snapshot(1, snap)

    lt.run(install())
    m = Mesh(lt, grpc_app, client, server, web)
    try:
        yield m
    finally:
        for ch in m.channels:
            ch.close()

        async def shutdown() -> None:
            for sc in (client, server, web):
                if sc.listener:
                    sc.listener.close()
                if sc.server:
                    sc.server.close()
                for conn in list(sc.state.connections):
                    conn.close()
                close_h2(sc.state)
            h2_server.close()
            await asyncio.sleep(0.05)

        lt.run(shutdown())
        lt.stop()
        grpc_app.server.stop(0)


# --------------------------------------------------------------------------- gRPC


class TestGrpc:
    def test_unary_call_crosses_two_sidecars_with_caller_identity(self, mesh: Mesh) -> None:
        """A unary call is answered through both sidecars; the app sees the caller's ID."""
        assert mesh.unary()(b"hello", timeout=5) == b"echo:hello"
        assert mesh.grpc_app.seen_peers == [identity("frontend").uri]

    def test_forged_identity_metadata_is_replaced(self, mesh: Mesh) -> None:
        """An identity header sent by the app is dropped and replaced by the verified one."""
        mesh.unary()(b"x", metadata=((PEER, "spiffe://evil/ns/x/sa/y"),), timeout=5)
        assert mesh.grpc_app.seen_peers == [identity("frontend").uri]

    def test_server_streaming_delivers_every_message(self, mesh: Mesh) -> None:
        """A server-streaming call yields all its messages in order."""
        items = list(mesh.stream()(b"500", timeout=10))
        assert items == [b"item%d" % i for i in range(500)]

    def test_error_status_and_message_arrive_in_trailers(self, mesh: Mesh) -> None:
        """grpc-status and grpc-message set by the server reach the client unchanged."""
        with pytest.raises(grpc.RpcError) as info:
            mesh.unary()(b"missing", timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details() == "no such item: missing"

    def test_client_cancel_resets_the_server_stream(self, mesh: Mesh) -> None:
        """Cancelling a call sends RST_STREAM through both sidecars: the server call ends."""
        call = mesh.stream()(b"100000", timeout=30)
        assert next(call) == b"item0"
        call.cancel()
        assert mesh.grpc_app.cancelled.wait(5)
        assert mesh.grpc_app.yielded[0] < 100000

    def test_concurrent_calls_share_one_connection_per_hop(self, mesh: Mesh) -> None:
        """A hundred calls at once are streams on one sidecar-to-sidecar and one app connection."""
        unary = mesh.unary()
        calls = [unary.future(b"n%d" % i, timeout=10) for i in range(100)]
        assert sorted(c.result() for c in calls) == sorted(b"echo:n%d" % i for i in range(100))
        assert runtime_for(mesh.client.state).outbound_pool.opened == 1
        assert runtime_for(mesh.server.state).app_pool.opened == 1

    def test_backpressure_bounds_what_the_server_streams_ahead(self, mesh: Mesh) -> None:
        """While the client reads nothing, the server can only get a few windows ahead."""
        total = 200  # 200 x 64 KiB = 12.5 MiB
        call = mesh.stream()(b"%dx%d" % (total, CHUNK), timeout=30)
        assert len(next(call)) == CHUNK
        time.sleep(1.0)
        ahead = mesh.grpc_app.yielded[0]
        assert ahead < 60, f"server produced {ahead} messages with nobody reading"
        assert sum(1 for _ in call) == total - 1

    def test_grpc_status_is_counted_per_route(self, mesh: Mesh) -> None:
        """Outbound metrics count calls by grpc-status next to the HTTP status."""
        unary = mesh.unary()
        unary(b"a", timeout=5)
        with pytest.raises(grpc.RpcError):
            unary(b"missing", timeout=5)
        text = mesh.client.state.render_metrics().decode()
        assert 'dst_service="catalog"' in text
        assert 'grpc_status="0"} 1' in text
        assert 'grpc_status="5"} 1' in text

    def test_unknown_service_is_refused_with_cause(self, mesh: Mesh) -> None:
        """A call to a service the mesh does not know fails with the proxy's cause."""
        with pytest.raises(grpc.RpcError) as info:
            mesh.unary("nosuch")(b"x", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "unknown-service" in (info.value.details() or "")

    def test_goaway_from_the_server_sidecar_moves_calls_to_a_new_connection(
        self, mesh: Mesh
    ) -> None:
        """After the server sidecar says GOAWAY, the next call opens a new connection."""
        unary = mesh.unary()
        unary(b"one", timeout=5)

        async def goaway() -> None:
            for conn in list(mesh.server.state.connections):
                conn.close()

        mesh.lt.run(goaway())
        time.sleep(0.1)
        assert unary(b"two", timeout=5) == b"echo:two"
        assert runtime_for(mesh.client.state).outbound_pool.opened == 2

    def test_draining_sidecar_finishes_streams_in_flight(self, mesh: Mesh) -> None:
        """A drain (GOAWAY) lets a running stream finish; new calls use a new connection."""
        call = mesh.stream()(b"300", timeout=10)
        assert next(call) == b"item0"

        async def drain() -> None:
            mesh.server.state.draining = True
            for conn in list(mesh.server.state.connections):
                conn.close()
            mesh.server.state.draining = False

        mesh.lt.run(drain())
        assert sum(1 for _ in call) == 299
        assert mesh.unary()(b"after", timeout=5) == b"echo:after"


# --------------------------------------------------------------------------- plain HTTP/2


class TestPlainH2:
    def test_body_and_trailers_cross_both_ways(self, mesh: Mesh) -> None:
        """Request body and trailers reach the app; its body and trailers come back."""
        client = H2Client(mesh.outbound_port)
        try:
            sid = client.request(post(b"/echo"), b"payload" * 5000, [(b"x-sum", b"42")])
            resp = client.wait(sid)
        finally:
            client.close()
        assert resp["code"] == 0
        head, trailers = resp["headers"]
        assert head[b":status"] == b"200"
        assert head[b"x-seen-peer"] == identity("frontend").uri.encode()
        assert head[b"x-seen-request-id"] != b"-"
        assert resp["body"] == b"payload" * 5000
        assert trailers == {b"x-sum": b"42"}

    def test_preface_split_across_reads_is_still_detected(self, mesh: Mesh) -> None:
        """The outbound port recognises HTTP/2 even when the preface trickles in."""
        client = H2Client(mesh.outbound_port, trickle_preface=True)
        try:
            resp = client.wait(client.request(get(b"/echo")))
        finally:
            client.close()
        assert resp["headers"][0][b":status"] == b"200"

    def test_upstream_reset_reaches_the_client_with_its_code(self, mesh: Mesh) -> None:
        """RST_STREAM from the app after the response started resets the client's stream."""
        client = H2Client(mesh.outbound_port)
        try:
            resp = client.wait(client.request(get(b"/reset")))
        finally:
            client.close()
        assert resp["headers"][0][b":status"] == b"200"
        assert resp["code"] == 11

    def test_proxy_errors_carry_x_gossamer_error(self, mesh: Mesh) -> None:
        """A request for an unknown service gets 404 with the cause as a response header."""
        client = H2Client(mesh.outbound_port)
        try:
            resp = client.wait(client.request(get(b"/", b"nosuch")))
        finally:
            client.close()
        head = resp["headers"][0]
        assert head[b":status"] == b"404"
        assert head[b"x-gossamer-error"] == b"unknown-service"
        assert b"unknown-service" in resp["body"]

    def test_discarded_request_bodies_give_their_window_back(self, mesh: Mesh) -> None:
        """Bodies of refused requests (5 MiB, over the connection window) are credited, so
        a later upload on the same connection still goes through."""
        client = H2Client(mesh.outbound_port)
        try:
            for _ in range(10):
                sid = client.request(post(b"/", b"nosuch"), b"z" * 512 * 1024)
                assert client.wait(sid)["headers"][0][b":status"] == b"404"
            sid = client.request(post(b"/echo"), b"q" * 1024 * 1024)
            resp = client.wait(sid)
        finally:
            client.close()
        assert resp["headers"][0][b":status"] == b"200"
        assert len(resp["body"]) == 1024 * 1024

    def test_many_streams_on_one_client_connection(self, mesh: Mesh) -> None:
        """Streams opened together on one connection are all answered."""
        client = H2Client(mesh.outbound_port)
        try:
            sids = [client.request(post(b"/echo"), b"%d" % i) for i in range(50)]
            bodies = [client.wait(sid)["body"] for sid in sids]
        finally:
            client.close()
        assert bodies == [b"%d" % i for i in range(50)]

    def test_plaintext_h2c_to_a_permissive_inbound_has_no_identity(self, mesh: Mesh) -> None:
        """PERMISSIVE inbound takes h2c by its preface; a forged identity header is dropped."""
        snap = snapshot(2, {}, source="web")
        snap["inbound"]["mtls"] = "PERMISSIVE"

        async def permissive() -> None:
            mesh.web.state.apply_snapshot(2, snap)

        mesh.lt.run(permissive())
        assert mesh.web.inbound is not None
        client = H2Client(mesh.web.inbound.port)
        try:
            forged = [*get(b"/echo"), (PEER.encode(), b"spiffe://evil/ns/a/sa/b")]
            resp = client.wait(client.request(forged))
        finally:
            client.close()
        assert resp["headers"][0][b":status"] == b"200"
        assert resp["headers"][0][b"x-seen-peer"] == b"-"

    @pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) missing")
    def test_h2load_requests_all_succeed(self, mesh: Mesh) -> None:
        """A real HTTP/2 load tool gets every request answered through both sidecars."""
        out = subprocess.run(
            ["h2load", "-n", "400", "-c", "2", "-m", "10", "-H", ":authority: web",
             f"http://127.0.0.1:{mesh.outbound_port}/echo"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert "400 succeeded" in out.stdout, out.stdout + out.stderr


# --------------------------------------------------------------------------- real processes


def test_grpc_crosses_real_sidecar_processes(tmp_path: Path) -> None:
    """``gossamer proxy`` processes joined to a real control plane carry gRPC calls (unary
    and streaming, discovered on first use) and count them by grpc-status in /metrics."""
    app = start_grpc_app()
    try:
        with running_control_plane(tmp_path / "cp") as cp:
            procs = Processes(tmp_path)
            try:
                server = procs.sidecar(cp, "catalog-sidecar", "catalog", app.port)
                client = procs.sidecar(cp, "frontend-sidecar", "frontend", None)
                wait_ready(server)
                wait_ready(client)
                channel = grpc.insecure_channel(
                    f"127.0.0.1:{client.ports['outbound']}",
                    options=[("grpc.default_authority", "catalog"), ("grpc.enable_http_proxy", 0)],
                )
                try:
                    unary = channel.unary_unary("/test.Echo/Unary")
                    assert unary(b"proc", timeout=10) == b"echo:proc"
                    stream = channel.unary_stream("/test.Echo/Stream")
                    assert len(list(stream(b"100", timeout=10))) == 100
                finally:
                    channel.close()
                assert app.seen_peers == [identity("frontend").uri]
                metrics = httpx.get(
                    f"http://127.0.0.1:{client.ports['admin']}/metrics", timeout=5
                ).text
                assert 'dst_service="catalog"' in metrics
                assert 'grpc_status="0"} 2' in metrics
            finally:
                procs.stop_all()
    finally:
        app.server.stop(0)
