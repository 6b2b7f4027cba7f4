"""HTTP/2 and gRPC across two real sidecars over real mTLS (ALPN h2), with real peers.

grpcio client → client sidecar outbound (h2c, detected by its preface) → h2 over mTLS →
server sidecar inbound → grpcio server (h2c). Plain HTTP/2 goes the same way to a small h2c
app, driven by a blocking client built on the same nghttp2 session wrapper.

Traffic management on the HTTP/2 path (issue 4): the route table is installed directly as a
control-plane snapshot (docs/internals.md §8) on the client sidecar; two gRPC server
instances, each behind its own sidecar and labelled ``version: v1``/``v2``, serve
``catalog`` and fail or stall as a test tells them.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import struct
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
from gossamer.protocol.h2 import binding
from gossamer.protocol.h2.session import CLOSED, DATA, GOAWAY, HEADERS, H2Error, H2Session
from gossamer.proxy.h2 import close_h2
from gossamer.proxy.h2.runtime import runtime_for
from gossamer.proxy.process.settings import Address
from tests.integration.control_helpers import running_control_plane
from tests.process_harness import Processes, wait_ready
from tests.sidecar_harness import (
    Dropper,
    LoopThread,
    Sidecar,
    app_proxy_env,
    cyclic_garbage,
    identity,
    snapshot,
    start_sidecar,
)
from tests.tools import require

PEER = "x-gossamer-peer-identity"
CHUNK = 64 * 1024


# --------------------------------------------------------------------------- gRPC app


@dataclass
class GrpcApp:
    server: grpc.Server
    port: int
    name: str = "app"
    cancelled: threading.Event = field(default_factory=threading.Event)
    yielded: list[int] = field(default_factory=lambda: [0])
    seen_peers: list[str] = field(default_factory=list)
    # Traffic-management behaviour of ``Flaky``/``Slow``/``Who`` calls, and what they saw.
    fail_rate: float = 0.0  # share of Flaky calls answered UNAVAILABLE (trailers-only)
    delay: float = 0.0  # how long a Slow call takes
    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    metadata: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rng: random.Random = field(default_factory=lambda: random.Random(7))


def start_grpc_app(name: str = "app") -> GrpcApp:
    app: GrpcApp

    def count(context: grpc.ServicerContext) -> None:
        with app.lock:
            app.calls += 1
            app.metadata.append({k: str(v) for k, v in context.invocation_metadata()})

    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        count(context)
        return app.name.encode()

    def flaky(request: bytes, context: grpc.ServicerContext) -> bytes:
        count(context)
        with app.lock:
            fail = app.rng.random() < app.fail_rate
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "flaky instance")
        return app.name.encode()

    def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        count(context)
        with app.lock:
            app.in_flight += 1
            app.max_in_flight = max(app.max_in_flight, app.in_flight)
        try:
            time.sleep(app.delay)
        finally:
            with app.lock:
                app.in_flight -= 1
        return app.name.encode()

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
            "Who": grpc.unary_unary_rpc_method_handler(who),
            "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[("grpc.so_reuseport", 0), ("grpc.http2.bdp_probe", 0)],
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    app = GrpcApp(server, port, name)
    return app


# --------------------------------------------------------------------------- h2c app


class H2App(asyncio.Protocol):
    """A small h2c server: ``/echo`` answers the request body, trailers and caller identity;
    ``/reset`` starts a response and resets the stream with ENHANCE_YOUR_CALM; ``/slow``
    answers after 2 s; ``/flaky`` answers 503 to every other request; ``/refuse-once``
    refuses its first stream (REFUSED_STREAM); ``/drop`` resets every stream before
    answering, ``/drop-once`` the first one. Every answer names the
    path and ``x-added`` header it saw; ``hits`` counts requests by path."""

    def __init__(self, hits: dict[bytes, int] | None = None) -> None:
        self.hits = hits if hits is not None else {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.session = H2Session(
            client=False, settings=[(binding.SETTINGS_MAX_CONCURRENT_STREAMS, 1000)]
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
        hits = self.hits[path] = self.hits.get(path, 0) + 1
        reply = [
            (b":status", b"503" if path == b"/flaky" and hits % 2 else b"200"),
            (b"x-seen-peer", headers.get(PEER.encode(), b"-")),
            (b"x-seen-request-id", headers.get(b"x-request-id", b"-")),
            (b"x-seen-path", path),
            (b"x-seen-added", headers.get(b"x-added", b"-")),
        ]
        if path == b"/slow":
            asyncio.get_running_loop().call_later(2.0, self.late, sid, reply)
            return
        if path == b"/drop" or (path == b"/drop-once" and hits == 1):
            self.session.reset(sid, 2)  # INTERNAL_ERROR, before any of the response
            return
        if path == b"/refuse-once" and hits == 1:
            self.session.reset(sid, 7)  # REFUSED_STREAM: not processed, may be sent again
            return
        if path == b"/reset":
            self.session.submit_response(sid, reply, end_stream=False)
            self.session.send_data(sid, b"partial")
            self.flush()
            self.session.reset(sid, 11)
            return
        self.session.submit_response(sid, reply, end_stream=False)
        self.session.send_data(sid, req["body"])
        self.session.end_stream(sid, req["trailers"] or [(b"x-trailer", b"none")])

    def late(self, sid: int, reply: list[tuple[bytes, bytes]]) -> None:
        try:
            self.session.submit_response(sid, reply, end_stream=True)
        except H2Error:
            return  # the stream or the connection is gone
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.close()


class H2Client:
    """A blocking HTTP/2 prior-knowledge client over one socket."""

    def __init__(self, port: int, *, trickle_preface: bool = False) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.session = H2Session(client=True, settings=[(binding.SETTINGS_ENABLE_PUSH, 0)])
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
    h2_hits: dict[bytes, int] = field(default_factory=dict)
    version: int = 1

    @property
    def outbound_port(self) -> int:
        assert self.client.outbound is not None
        return self.client.outbound.port

    def channel(self, authority: str = "catalog", *, direct: bool = False) -> grpc.Channel:
        """A channel as an app's (the sidecar from ``http_proxy``: a CONNECT tunnel to
        ``authority``), or, ``direct``, dialling the outbound port with h2c prior knowledge."""
        if direct:
            ch = grpc.insecure_channel(
                f"127.0.0.1:{self.outbound_port}",
                options=[("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0),
                         ("grpc.http2.bdp_probe", 0)],
            )  # fmt: skip
        else:
            ch = grpc.insecure_channel(f"{authority}:80", options=[("grpc.http2.bdp_probe", 0)])
        self.channels.append(ch)
        return ch

    def unary(self, authority: str = "catalog", *, direct: bool = False) -> Any:
        return self.channel(authority, direct=direct).unary_unary("/test.Echo/Unary")

    def stream(self) -> Any:
        return self.channel().unary_stream("/test.Echo/Stream")


@pytest.fixture
def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mesh]:
    lt = LoopThread()
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    grpc_app = start_grpc_app()

    h2_hits: dict[bytes, int] = {}

    async def start_h2_app() -> asyncio.Server:
        return await asyncio.get_running_loop().create_server(
            lambda: H2App(h2_hits), "127.0.0.1", 0
        )

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
    m = Mesh(lt, grpc_app, client, server, web, h2_hits=h2_hits)
    app_proxy_env(monkeypatch, m.outbound_port)
    try:
        yield m
    finally:
        for ch in m.channels:
            ch.close()

        async def shutdown() -> None:
            for sc in (client, server, web):
                await sc.close()
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
        """A call to a service the mesh does not know fails with the proxy's cause (dialling
        the outbound port directly: through CONNECT the tunnel itself is refused, and grpcio
        reports the proxy's 404 as UNAVAILABLE; tests/integration/test_connect.py)."""
        with pytest.raises(grpc.RpcError) as info:
            mesh.unary("nosuch", direct=True)(b"x", timeout=5)
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
    def test_rapid_reset_gets_goaway(self, mesh: Mesh) -> None:
        """A client that opens streams and resets them at once (CVE-2023-44487, "rapid reset")
        is told GOAWAY and cut off, whatever the libnghttp2 version (issue 11, finding 7).
        500 resets: under the burst of libnghttp2's own mitigation (where it has one, 1000),
        over the sidecar's (200 a second)."""
        client = H2Client(mesh.outbound_port)
        goaway = False
        try:
            for _batch in range(5):
                sids = []
                for _ in range(100):
                    sid, _ = client.session.submit_request(get(b"/echo"), end_stream=True)
                    sids.append(sid)
                opened = client.session.data_to_send()  # HEADERS go out before the resets
                for sid in sids:
                    client.session.reset(sid, 8)  # CANCEL
                try:
                    client.sock.sendall(opened + client.session.data_to_send())
                    client.sock.settimeout(0.2)
                    data = client.sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    goaway = True
                    break
                if not data:
                    goaway = True
                    break
                events = client.session.receive(data)
                if any(kind == GOAWAY for kind, *_rest in events):
                    goaway = True
                    break
        finally:
            client.close()
        assert goaway
        assert mesh.h2_hits.get(b"/echo", 0) < 500

    @pytest.mark.parametrize("frame", [
        struct.pack(">I", 4)[1:] + b"\x08\x00\x00\x00\x00\x00" + struct.pack(">I", 1),
        struct.pack(">I", 8)[1:] + b"\x06\x00\x00\x00\x00\x00" + b"12345678",
    ], ids=["window-update", "ping"])  # fmt: skip
    def test_frame_flood_gets_goaway(self, mesh: Mesh, frame: bytes) -> None:
        """Frames that complete nothing cost the sidecar a bounded amount, then GOAWAY
        ENHANCE_YOUR_CALM and close (issue 11, finding 7): WINDOW_UPDATEs (like CONTINUATION
        and empty DATA floods) past MAX_IDLE_FRAME_BYTES, by the sidecar's own count; PINGs
        when libnghttp2's guard trips (acks piling up), which closed without a GOAWAY before.
        Before, the WINDOW_UPDATE flood was read for as long as the client sent it."""
        chunk = frame * (64 * 1024 // len(frame))
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        received = bytearray()
        closed = False
        with socket.create_connection(("127.0.0.1", mesh.outbound_port), timeout=5) as sock:
            sock.sendall(preface)
            for _ in range(4 * 1024 * 1024 // len(chunk)):  # 4 MiB at most
                try:
                    sock.sendall(chunk)
                    sock.settimeout(0.05)
                    while True:  # read the PING acks so that nghttp2's own guard stays quiet
                        data = sock.recv(1 << 20)
                        if not data:
                            closed = True
                            break
                        received += data
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
                if closed:
                    break
        assert closed
        assert mesh.client.state.metrics.errors.get(("outbound", "h2-frame-flood")) == 1
        assert _goaway_code(bytes(received)) == 11  # ENHANCE_YOUR_CALM

    def test_request_trailers_cannot_carry_a_forged_identity(self, mesh: Mesh) -> None:
        """Request trailers are filtered like headers: the identity header, connection-specific
        fields and pseudo-fields never reach the app (issue 11, lows)."""
        client = H2Client(mesh.outbound_port)
        forged = (b"x-gossamer-peer-identity", b"spiffe://gossamer.local/ns/default/sa/admin")
        try:
            sid = client.request(post(b"/echo"), b"payload", [(b"x-sum", b"42"), forged])
            resp = client.wait(sid)
        finally:
            client.close()
        _head, trailers = resp["headers"]
        assert trailers == {b"x-sum": b"42"}  # the echo app returns the trailers it read

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

    def test_closed_connections_are_freed_without_the_cyclic_gc(self, mesh: Mesh) -> None:
        """Closed HTTP/2 connections (sessions, streams, TLS) go back at once, not when a
        rare cyclic GC pass finds them."""
        sidecars = (mesh.client, mesh.web)

        async def close_and_wait() -> None:
            for sc in sidecars:
                close_h2(sc.state)
            for _ in range(100):
                if not any(sc.state.connections for sc in sidecars):
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # connection_lost of the closed pool connections

        def traffic() -> None:
            for _ in range(2):
                client = H2Client(mesh.outbound_port)
                try:
                    sids = [client.request(get(b"/hello")) for _ in range(3)]
                    assert all(client.wait(sid)["code"] == 0 for sid in sids)
                finally:
                    client.close()
            mesh.lt.run(close_and_wait())

        garbage = cyclic_garbage(traffic)
        assert not garbage, dict(garbage)

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

    def test_h2load_requests_all_succeed(self, mesh: Mesh) -> None:
        """A real HTTP/2 load tool gets every request answered through both sidecars."""
        require(shutil.which("h2load") is not None, "h2load (Debian nghttp2-client)")
        out = subprocess.run(
            ["h2load", "-n", "400", "-c", "2", "-m", "10", "-H", ":authority: web",
             f"http://127.0.0.1:{mesh.outbound_port}/echo"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert "400 succeeded" in out.stdout, out.stdout + out.stderr


# --------------------------------------------------------------------------- traffic: gRPC


@dataclass
class Split:
    """``catalog`` served by two gRPC instances (v1, v2), each behind its own sidecar."""

    lt: LoopThread
    apps: dict[str, GrpcApp]
    sidecars: dict[str, Sidecar]
    client: Sidecar
    channel: grpc.Channel
    version: int = 0

    def install(self, versions: tuple[str, ...] = ("v1", "v2"), **catalog: Any) -> None:
        """Install a snapshot where catalog has the endpoints of ``versions`` plus ``catalog``."""
        self.version += 1
        ports = [self.sidecars[v].inbound.port for v in versions]  # type: ignore[union-attr]
        snap = snapshot(self.version, {"catalog": ports}, source="frontend")
        service = snap["outbound"]["services"][0]
        for ep, version in zip(service["endpoints"], versions, strict=True):
            ep["labels"] = {"version": version}
        service.update(catalog)

        async def apply() -> None:
            self.client.state.apply_snapshot(self.version, snap)

        self.lt.run(apply())

    def method(self, name: str) -> Any:
        return self.channel.unary_unary(f"/test.Echo/{name}")

    def outcomes(
        self, name: str, n: int, *, metadata: tuple[tuple[str, str], ...] = (), batch: int = 20
    ) -> list[str]:
        """``n`` calls, ``batch`` at a time: each answer (the instance name) or error code."""
        call = self.method(name)
        out: list[str] = []
        for start in range(0, n, batch):
            futs = [
                call.future(b"x", metadata=metadata, timeout=10)
                for _ in range(min(batch, n - start))
            ]
            for fut in futs:
                try:
                    out.append(fut.result().decode())
                except grpc.RpcError as exc:
                    out.append(exc.code().name)
        return out

    def calls(self) -> int:
        return sum(app.calls for app in self.apps.values())


@pytest.fixture
def split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Split]:
    lt = LoopThread()
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    apps = {v: start_grpc_app(v) for v in ("v1", "v2")}
    sidecars = {
        v: lt.run(start_sidecar(ca, tmp_path / v, "catalog", Address("127.0.0.1", app.port)))
        for v, app in apps.items()
    }
    client = lt.run(start_sidecar(ca, tmp_path / "c", "frontend", None))
    assert client.outbound is not None
    app_proxy_env(monkeypatch, client.outbound.port)
    channel = grpc.insecure_channel("catalog:80", options=[("grpc.http2.bdp_probe", 0)])
    sp = Split(lt, apps, sidecars, client, channel)
    try:
        yield sp
    finally:
        channel.close()

        async def shutdown() -> None:
            for sc in (client, *sidecars.values()):
                await sc.close()
            await asyncio.sleep(0.05)

        lt.run(shutdown())
        lt.stop()
        for app in apps.values():
            app.server.stop(0)


def subset(version: str, weight: int = 1) -> dict[str, Any]:
    return {"service": "catalog.default", "subset": {"version": version}, "weight": weight}


def fast_retry(**kw: Any) -> dict[str, Any]:
    return {"attempts": 5, "on": ["unavailable"], "backoff_base_ms": 1, "backoff_max_ms": 5, **kw}


GENEROUS_BUDGET = {"ratio": 1.0, "min_per_second": 100}


class TestGrpcTraffic:
    def test_unavailable_is_retried_when_the_policy_says_so(self, split: Split) -> None:
        """Instances failing 30% of calls with UNAVAILABLE (trailers-only): with ``on:
        [unavailable]`` the caller's success rate is above 99%, at the cost of retries."""
        for app in split.apps.values():
            app.fail_rate = 0.3
        split.install(policy={"retry": fast_retry(), "retry_budget": GENEROUS_BUDGET})
        results = split.outcomes("Flaky", 400)
        ok = sum(r in ("v1", "v2") for r in results)
        assert ok / 400 > 0.99, results
        assert split.calls() > 450  # about 400 / 0.7 tries

    def test_unavailable_is_not_retried_without_a_policy(self, split: Split) -> None:
        """The same failures without a retry policy reach the caller; one try per call."""
        for app in split.apps.values():
            app.fail_rate = 0.3
        split.install()
        results = split.outcomes("Flaky", 400)
        failed = results.count("UNAVAILABLE")
        assert 0.2 <= failed / 400 <= 0.4, failed
        assert split.calls() == 400

    def test_status_outside_the_policy_is_not_retried(self, split: Split) -> None:
        """``on: [internal]`` does not cover UNAVAILABLE: every call is tried once."""
        split.apps["v1"].fail_rate = 1.0
        split.install(versions=("v1",), policy={"retry": fast_retry(on=["internal"])})
        assert set(split.outcomes("Flaky", 20)) == {"UNAVAILABLE"}
        assert split.calls() == 20

    def test_retry_budget_bounds_upstream_load_when_everything_fails(self, split: Split) -> None:
        """With every call failing and 10 retries allowed, the budget (ratio 0.2, floor
        1/s over 10 s) keeps the tries within requests * 1.2 + 10."""
        for app in split.apps.values():
            app.fail_rate = 1.0
        split.install(policy={
            "retry": fast_retry(attempts=10),
            "retry_budget": {"ratio": 0.2, "min_per_second": 1, "window_ms": 10000},
        })  # fmt: skip
        n = 200
        assert set(split.outcomes("Flaky", n, batch=10)) == {"UNAVAILABLE"}
        assert n < split.calls() <= n * 1.2 + 10 + 2

    def test_weighted_split_of_calls_lands_within_bounds(self, split: Split) -> None:
        """1,000 calls under a 90/10 split put 10% ± 3 points on v2."""
        split.install(http_routes=[{"name": "catalog/split", "matches": [],
                                    "backends": [subset("v1", 90), subset("v2", 10)]}])  # fmt: skip
        results = split.outcomes("Who", 1000, batch=50)
        assert set(results) <= {"v1", "v2"}
        assert abs(results.count("v2") / 1000 - 0.10) <= 0.03, results.count("v2")

    def test_header_match_sends_canary_calls_to_v2_only(self, split: Split) -> None:
        """Metadata ``x-canary: 1`` (an HTTP/2 header) selects the v2 rule; other calls v1."""
        split.install(http_routes=[
            {"name": "catalog/canary",
             "matches": [{"headers": [{"name": "x-canary", "type": "Exact", "value": "1"}]}],
             "backends": [subset("v2")]},
            {"name": "catalog/default", "backends": [subset("v1")]},
        ])  # fmt: skip
        assert set(split.outcomes("Who", 30, metadata=(("x-canary", "1"),))) == {"v2"}
        assert set(split.outcomes("Who", 30)) == {"v1"}

    def test_route_timeout_is_deadline_exceeded_on_time(self, split: Split) -> None:
        """A call slower than the 300 ms timeout fails DEADLINE_EXCEEDED at 300 ms ± 50."""
        for app in split.apps.values():
            app.delay = 2.0
        split.install(policy={"timeout_ms": 300})
        split.outcomes("Who", 2)  # connections exist: the clock measures the deadline only
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            split.method("Slow")(b"x", timeout=5)
        elapsed = time.monotonic() - started
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "upstream-timeout" in (info.value.details() or "")
        assert abs(elapsed - 0.3) < 0.05, elapsed

    def test_calls_beyond_the_limits_fail_fast_with_overflow(self, split: Split) -> None:
        """max_connections 2 (streams in flight) and max_pending 2: of 12 concurrent slow
        calls 4 are served, 8 fail at once UNAVAILABLE with ``overflow``; the instance never
        has more than 2 in flight."""
        app = split.apps["v1"]
        app.delay = 0.3
        pool = {"max_connections": 2, "max_pending": 2}
        split.install(versions=("v1",), policy={"connection_pool": pool})
        split.outcomes("Who", 1)  # the connection exists before the burst
        slow = split.method("Slow")
        started = time.monotonic()
        done: dict[int, float] = {}
        futs = [slow.future(b"x", timeout=10) for _ in range(12)]
        for i, fut in enumerate(futs):
            fut.add_done_callback(lambda _f, i=i: done.setdefault(i, time.monotonic() - started))
        codes = [f.code() for f in futs]
        overflow = [i for i, f in enumerate(futs) if f.code() == grpc.StatusCode.UNAVAILABLE]
        assert codes.count(grpc.StatusCode.OK) == 4
        assert len(overflow) == 8
        assert all("overflow" in (futs[i].details() or "") for i in overflow)
        assert all(done[i] < 0.25 for i in overflow), done
        assert app.max_in_flight <= 2

    def test_abort_fault_gives_the_mapped_grpc_status(self, split: Split) -> None:
        """An abort fault of 503 reaches a gRPC caller as UNAVAILABLE; no instance is called."""
        split.install(http_routes=[{"name": "catalog/chaos",
                                    "filters": {"fault": {"abort_status": 503}}}])  # fmt: skip
        with pytest.raises(grpc.RpcError) as info:
            split.method("Who")(b"x", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "fault-injected" in (info.value.details() or "")
        assert split.calls() == 0

    def test_mirror_copies_calls_without_touching_the_caller(self, split: Split) -> None:
        """Every call goes to v1 and a copy to a slow v2; the caller sees v1 and never waits."""
        split.apps["v2"].delay = 0.5
        split.install(http_routes=[{
            "name": "catalog/mirror", "backends": [subset("v1")],
            "filters": {"mirror": {"service": "catalog.default", "subset": {"version": "v2"},
                                   "percent": 100}},
        }])  # fmt: skip
        who = split.method("Slow")
        slowest = 0.0
        for _ in range(20):
            started = time.monotonic()
            assert who(b"x", timeout=5) == b"v1"
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 0.25, slowest
        deadline = time.monotonic() + 5
        while split.apps["v2"].calls < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert split.apps["v2"].calls == 20
        assert split.apps["v1"].calls == 20

    def test_per_try_timeout_moves_the_call_to_another_instance(self, split: Split) -> None:
        """A stalled v1 costs a 200 ms per-try timeout; the retry lands on v2."""
        split.apps["v1"].delay = 2.0
        split.install(policy={
            "load_balancer": {"type": "RoundRobin"},
            "retry": fast_retry(on=["reset"], per_try_timeout_ms=200),
            "retry_budget": GENEROUS_BUDGET,
        })  # fmt: skip
        slow = split.method("Slow")
        for _ in range(6):
            started = time.monotonic()
            assert slow(b"x", timeout=5) == b"v2"
            assert time.monotonic() - started < 1.0

    def test_consistent_hash_keeps_a_user_on_one_instance(self, split: Split) -> None:
        """Hashing on the ``x-user`` header: each user's calls all land on one instance."""
        split.install(policy={"load_balancer": {"type": "ConsistentHash", "hash_header": "x-user"}})
        homes = {
            user: set(split.outcomes("Who", 5, metadata=(("x-user", user),)))
            for user in (f"u{i}" for i in range(20))
        }
        assert all(len(home) == 1 for home in homes.values()), homes
        assert {next(iter(home)) for home in homes.values()} == {"v1", "v2"}

    def test_connection_quota_opens_a_new_connection(self, split: Split) -> None:
        """max_requests_per_connection 2: six calls use three connections to the instance."""
        split.install(versions=("v1",),
                      policy={"connection_pool": {"max_requests_per_connection": 2}})  # fmt: skip
        assert split.outcomes("Who", 6, batch=1) == ["v1"] * 6
        assert runtime_for(split.client.state).outbound_pool.opened == 3

    def test_instance_failing_by_grpc_status_is_ejected(self, split: Split) -> None:
        """Outlier detection counts UNAVAILABLE as a gateway error: v1 is ejected after 3."""
        split.apps["v1"].fail_rate = 1.0
        split.install(policy={
            "load_balancer": {"type": "RoundRobin"},
            "outlier": {"consecutive_gateway_errors": 3, "interval_ms": 1000,
                        "base_ejection_ms": 30000, "max_ejection_percent": 50},
        })  # fmt: skip
        results = split.outcomes("Flaky", 40, batch=1)
        assert split.apps["v1"].calls == 3
        assert results[-30:] == ["v2"] * 30


# --------------------------------------------------------------------------- traffic: plain h2


def install_web(mesh: Mesh, **web: Any) -> None:
    """Give the client sidecar a snapshot where ``web`` has the extra fields ``web``."""
    mesh.version += 1
    assert mesh.server.inbound is not None and mesh.web.inbound is not None
    snap = snapshot(
        mesh.version,
        {"catalog": [mesh.server.inbound.port], "web": [mesh.web.inbound.port]},
        source="frontend",
    )
    for service in snap["outbound"]["services"]:
        if service["name"] == "web":
            service.update(web)

    async def apply() -> None:
        mesh.client.state.apply_snapshot(mesh.version, snap)

    mesh.lt.run(apply())


def put(path: bytes) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"PUT"), *get(path)[1:]]


class TestPlainH2Traffic:
    def test_route_timeout_gives_504_on_time(self, mesh: Mesh) -> None:
        """A slow answer past the 300 ms timeout is a 504 upstream-timeout at 300 ms ± 50."""
        install_web(mesh, policy={"timeout_ms": 300})
        client = H2Client(mesh.outbound_port)
        try:
            client.wait(client.request(get(b"/echo")))  # connections exist before the clock
            started = time.monotonic()
            resp = client.wait(client.request(get(b"/slow")))
            elapsed = time.monotonic() - started
        finally:
            client.close()
        head = resp["headers"][0]
        assert (head[b":status"], head[b"x-gossamer-error"]) == (b"504", b"upstream-timeout")
        assert abs(elapsed - 0.3) < 0.05, elapsed

    def test_streams_beyond_the_limits_get_a_fast_503_overflow(self, mesh: Mesh) -> None:
        """One stream in flight and one waiting: of six slow streams on one connection, four
        are answered 503 overflow at once."""
        pool = {"max_connections": 1, "max_pending": 1}
        install_web(mesh, policy={"connection_pool": pool, "timeout_ms": 300})
        client = H2Client(mesh.outbound_port)
        try:
            started = time.monotonic()
            sids = [client.request(get(b"/slow")) for _ in range(6)]
            first = {sid: client.wait(sid)["headers"][0] for sid in sids[2:]}
            fast = time.monotonic() - started
            rest = {sid: client.wait(sid)["headers"][0] for sid in sids[:2]}
        finally:
            client.close()
        assert fast < 0.25, fast
        assert all(h[b":status"] == b"503" for h in first.values())
        assert all(h[b"x-gossamer-error"] == b"overflow" for h in first.values())
        assert all(h[b":status"] == b"504" for h in rest.values())
        assert mesh.h2_hits[b"/slow"] <= 2

    def test_5xx_is_retried_with_the_body_replayed(self, mesh: Mesh) -> None:
        """PUTs to an app answering 503 to every other request all succeed with ``on: [5xx]``,
        and the retried try carries the whole body again."""
        install_web(mesh, policy={"retry": fast_retry(on=["5xx"]),
                                  "retry_budget": GENEROUS_BUDGET})  # fmt: skip
        client = H2Client(mesh.outbound_port)
        try:
            for i in range(10):
                body = b"body-%d-" % i * 1000
                resp = client.wait(client.request(put(b"/flaky"), body))
                assert resp["headers"][0][b":status"] == b"200"
                assert resp["body"] == body
        finally:
            client.close()
        assert mesh.h2_hits[b"/flaky"] == 20

    def test_body_over_the_buffer_limit_is_not_retried(self, mesh: Mesh) -> None:
        """A body larger than max_body_bytes goes through but is not replayed: the 503 stays."""
        install_web(mesh, policy={"retry": fast_retry(on=["5xx"], max_body_bytes=1024)})
        client = H2Client(mesh.outbound_port)
        try:
            resp = client.wait(client.request(put(b"/flaky"), b"z" * 4096))
        finally:
            client.close()
        assert resp["headers"][0][b":status"] == b"503"
        assert mesh.h2_hits[b"/flaky"] == 1

    def test_a_stream_the_app_refuses_is_sent_again_without_a_second_admission(
        self, mesh: Mesh
    ) -> None:
        """The app refuses a stream (REFUSED_STREAM): the inbound sidecar sends it to the app
        again without running its request slots a second time, so a rate limit with one token
        lets that one request through (it answered 429 when the resend was admitted again)."""
        snap = snapshot(1, {}, source="web")
        snap["inbound"]["rate_limit"] = {"requests_per_second": 1, "burst": 1}

        async def apply() -> None:
            mesh.web.state.apply_snapshot(1, snap)

        mesh.lt.run(apply())
        client = H2Client(mesh.outbound_port)
        try:
            resp = client.wait(client.request(get(b"/refuse-once")))
        finally:
            client.close()
        head = resp["headers"][0]
        assert head[b":status"] == b"200", head
        assert mesh.h2_hits[b"/refuse-once"] == 2

    def test_a_safe_stream_the_app_dropped_is_sent_to_it_once_more(self, mesh: Mesh) -> None:
        """The app reset a GET's stream before answering: the sidecar sends it once more and
        the answer comes. A POST is not sent again; a GET it keeps dropping goes twice."""
        client = H2Client(mesh.outbound_port)
        try:
            once = client.wait(client.request(get(b"/drop-once")))
            posted = client.wait(client.request(post(b"/drop")))
            dropped = client.wait(client.request(get(b"/drop")))
        finally:
            client.close()
        assert once["headers"][0][b":status"] == b"200"
        assert mesh.h2_hits[b"/drop-once"] == 2
        for resp in (posted, dropped):
            head = resp["headers"][0]
            assert (head[b":status"], head[b"x-gossamer-error"]) == (b"502", b"upstream-reset")
        assert mesh.h2_hits[b"/drop"] == 3  # the POST once, the GET twice

    @pytest.mark.parametrize("planned", [False, True], ids=["no plan", "with a timeout"])
    def test_a_safe_stream_a_destination_dropped_goes_to_another_endpoint(
        self, mesh: Mesh, tmp_path: Path, planned: bool
    ) -> None:
        """A destination took the connection and closed it unanswered (its app died while
        answering): a GET goes to another endpoint, once, and is answered; a POST is not
        sent again (502 upstream-reset). The same when the stream has a plan (here a timeout,
        no retry policy), as HTTP/1.1 does."""
        ca = CertificateAuthority.load_or_create(tmp_path / "ca")  # the mesh's own CA
        dropper = Dropper(mesh.lt, ca, tmp_path / "dropper", "web", alpn=["h2"])
        assert mesh.web.inbound is not None
        ports = (dropper.port, mesh.web.inbound.port)
        policy: dict[str, Any] = {"load_balancer": {"type": "RoundRobin"}}
        if planned:
            policy["timeout_ms"] = 5000
        install_web(mesh, endpoints=[{"address": "127.0.0.1", "port": p, "labels": {}}
                                     for p in ports], policy=policy)  # fmt: skip
        client = H2Client(mesh.outbound_port)
        try:
            for _ in range(20):  # until the dropper has had some (round robin)
                head = client.wait(client.request(get(b"/echo")))["headers"][0]
                assert head[b":status"] == b"200", head
                if dropper.requests >= 2:
                    break
            assert dropper.requests >= 2
            for _ in range(20):  # until a POST reaches the dropper: it is not sent again
                head = client.wait(client.request(post(b"/echo")))["headers"][0]
                if head[b":status"] != b"200":
                    break
        finally:
            client.close()
            dropper.server.close()
        assert (head[b":status"], head[b"x-gossamer-error"]) == (b"502", b"upstream-reset")

    def test_redirect_is_answered_by_the_proxy(self, mesh: Mesh) -> None:
        """A redirect rule answers 301 with the new location; the app sees nothing."""
        install_web(mesh, http_routes=[{
            "name": "web/moved", "matches": [{"path": {"type": "Exact", "value": "/old"}}],
            "filters": {"redirect": {"path": "/new", "status_code": 301}},
        }])  # fmt: skip
        client = H2Client(mesh.outbound_port)
        try:
            resp = client.wait(client.request(get(b"/old?q=1")))
        finally:
            client.close()
        head = resp["headers"][0]
        assert head[b":status"] == b"301"
        assert head[b"location"] == b"http://web/new?q=1"
        assert mesh.h2_hits == {}

    def test_path_rewrite_and_header_filters(self, mesh: Mesh) -> None:
        """A prefix rewrite changes :path; request and response header edits apply."""
        install_web(mesh, http_routes=[{
            "name": "web/rw", "matches": [{"path": {"type": "Prefix", "value": "/old"}}],
            "filters": {"rewrite": {"type": "ReplacePrefixMatch", "value": "/echo"},
                        "request_headers": {"set": {"x-added": "yes"}},
                        "response_headers": {"set": {"x-routed": "web/rw"}}},
        }])  # fmt: skip
        client = H2Client(mesh.outbound_port)
        try:
            resp = client.wait(client.request(get(b"/old?q=1")))
        finally:
            client.close()
        head = resp["headers"][0]
        assert head[b":status"] == b"200"
        assert head[b"x-seen-path"] == b"/echo?q=1"
        assert head[b"x-seen-added"] == b"yes"
        assert head[b"x-routed"] == b"web/rw"


# --------------------------------------------------------------------------- real processes


def test_grpc_crosses_real_sidecar_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
                app_proxy_env(monkeypatch, client.ports["outbound"])
                channel = grpc.insecure_channel("catalog:80")
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


def _goaway_code(data: bytes) -> int | None:
    """The error code of the first GOAWAY frame in raw HTTP/2 server bytes, if any."""
    at = 0
    while at + 9 <= len(data):
        length = int.from_bytes(data[at : at + 3], "big")
        if data[at + 3] == 7 and at + 9 + 8 <= len(data):
            return int.from_bytes(data[at + 13 : at + 17], "big")
        at += 9 + length
    return None
