"""The HTTP/1.1 data path across two real sidecars over real mTLS, with a real app behind.

client socket → client sidecar (outbound) → mTLS → server sidecar (inbound) → app.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gossamer.control.ca import CertificateAuthority
from gossamer.proxy.process.settings import Address
from tests.sidecar_harness import (
    Dropper,
    LoopThread,
    Sidecar,
    cyclic_garbage,
    free_port,
    identity,
    recv_response,
    snapshot,
    start_sidecar,
)


@dataclass
class AppRecord:
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    connections: int = 0


class App:
    """A small HTTP/1.1 app whose behaviour is chosen by the request path."""

    def __init__(self, lt: LoopThread) -> None:
        self.record = AppRecord()
        self.lt = lt
        self.server: asyncio.Server = lt.run(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        self.address = Address("127.0.0.1", self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.record.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = b""
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding") == "chunked":
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        data = await reader.readexactly(size + 2)
                        body += data[:-2]
                        if size == 0:
                            break
                self.record.requests.append((method, path, headers, body))
                if not await self._respond(method, path, headers, body, writer):
                    return
        finally:
            writer.close()

    async def _respond(
        self, method: str, path: str, headers: dict[str, str], body: bytes,
        writer: asyncio.StreamWriter,
    ) -> bool:
        if path == "/reset":
            return False
        if path == "/reset-once" and sum(1 for r in self.record.requests if r[1] == path) == 1:
            return False  # the first one only; then answered as any other path
        if path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
            return True
        if path == "/close-delimited":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close")
            await writer.drain()
            return False
        if path == "/head":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
            return True
        if path == "/nocontent":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            return True
        if path.startswith("/big/"):
            n = int(path.split("/")[2])
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n)
            writer.write(bytes(i % 251 for i in range(n)))
            await writer.drain()
            return True
        peer = headers.get("x-gossamer-peer-identity", "")
        out = body if path == "/echo" else f"{method} {path}".encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-seen-peer: %b\r\n"
            b"x-seen-request-id: %b\r\n\r\n%b"
            % (len(out), peer.encode(), headers.get("x-request-id", "").encode(), out)
        )
        return True

    def close(self) -> None:
        self.server.close()


@dataclass
class Mesh:
    lt: LoopThread
    ca: CertificateAuthority
    app: App
    client: Sidecar
    server: Sidecar
    tmp: Path

    def connect(self) -> socket.socket:
        assert self.client.outbound is not None
        sock = socket.create_connection(("127.0.0.1", self.client.outbound.port), timeout=10)
        return sock

    def request(self, raw: bytes, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        with self.connect() as sock:
            sock.sendall(raw)
            return recv_response(sock, **kw)

    def install(self, snap: dict[str, Any]) -> None:
        async def apply() -> None:
            self.client.state.apply_snapshot(snap["version"], snap)

        self.lt.run(apply())

    def configure_server(self, snap: dict[str, Any]) -> None:
        async def apply() -> None:
            self.server.state.apply_snapshot(snap["version"], snap)

        self.lt.run(apply())


def _running_mesh(tmp_path: Path, configure_server: bool) -> Iterator[Mesh]:
    lt = LoopThread()
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    app = App(lt)
    server = lt.run(start_sidecar(ca, tmp_path / "server", "catalog", app.address,
                                  configured=configure_server))  # fmt: skip
    client = lt.run(start_sidecar(ca, tmp_path / "client", "frontend", None))
    m = Mesh(lt, ca, app, client, server, tmp_path)
    assert server.inbound is not None
    m.install(snapshot(1, {"catalog": [server.inbound.port]}, source="frontend"))
    try:
        yield m
    finally:
        async def shutdown() -> None:
            for sc in (client, server):
                await sc.close()
            app.close()
            await asyncio.sleep(0.05)

        lt.run(shutdown())
        lt.stop()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    yield from _running_mesh(tmp_path, True)


@pytest.fixture
def unconfigured_mesh(tmp_path: Path) -> Iterator[Mesh]:
    """The server sidecar has had no config yet (it just started)."""
    yield from _running_mesh(tmp_path, False)


class TestForwarding:
    def test_request_crosses_with_mtls_and_app_sees_caller_identity(self, mesh: Mesh) -> None:
        """The app behind the server sidecar sees the caller's SPIFFE ID in a header."""
        status, headers, body = mesh.request(b"GET /hello HTTP/1.1\r\nHost: catalog\r\n\r\n")
        assert status == 200
        assert body == b"GET /hello"
        assert headers["x-seen-peer"] == identity("frontend").uri

    def test_forged_identity_header_from_outside_is_replaced(self, mesh: Mesh) -> None:
        """A caller cannot claim another identity by sending the header itself."""
        status, headers, _ = mesh.request(
            b"GET / HTTP/1.1\r\nHost: catalog\r\n"
            b"x-gossamer-peer-identity: spiffe://gossamer.local/ns/default/sa/admin\r\n\r\n"
        )
        assert status == 200
        assert headers["x-seen-peer"] == identity("frontend").uri

    def test_absolute_form_target_as_http_proxy(self, mesh: Mesh) -> None:
        """Apps using the sidecar as HTTP_PROXY send absolute-form targets."""
        status, _, body = mesh.request(
            b"GET http://catalog.default.svc/items?x=1 HTTP/1.1\r\n"
            b"Host: catalog.default.svc\r\n\r\n"
        )
        assert status == 200
        assert body == b"GET /items?x=1"

    def test_request_id_is_generated_and_passed_on(self, mesh: Mesh) -> None:
        """A request without x-request-id gets one; an existing one is kept."""
        _, headers, _ = mesh.request(b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")
        assert headers["x-seen-request-id"]
        _, headers, _ = mesh.request(
            b"GET / HTTP/1.1\r\nHost: catalog\r\nx-request-id: abc-123\r\n\r\n"
        )
        assert headers["x-seen-request-id"] == "abc-123"

    def test_content_length_body_is_forwarded(self, mesh: Mesh) -> None:
        """A request body with Content-Length arrives whole."""
        payload = b"x" * 100_000
        status, _, body = mesh.request(
            b"POST /echo HTTP/1.1\r\nHost: catalog\r\ncontent-length: %d\r\n\r\n%b"
            % (len(payload), payload)
        )
        assert status == 200
        assert body == payload

    def test_chunked_request_body_is_forwarded(self, mesh: Mesh) -> None:
        """A chunked request body arrives whole (re-framed as chunks)."""
        status, _, body = mesh.request(
            b"POST /echo HTTP/1.1\r\nHost: catalog\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
        )
        assert status == 200
        assert body == b"abcdefg"

    def test_chunked_response_is_streamed(self, mesh: Mesh) -> None:
        status, headers, body = mesh.request(b"GET /chunked HTTP/1.1\r\nHost: catalog\r\n\r\n")
        assert status == 200
        assert headers["transfer-encoding"] == "chunked"
        assert body == b"hello world"

    def test_read_until_close_response_is_rechunked(self, mesh: Mesh) -> None:
        """A body delimited by connection close reaches an HTTP/1.1 client as chunks."""
        status, headers, body = mesh.request(
            b"GET /close-delimited HTTP/1.1\r\nHost: catalog\r\n\r\n"
        )
        assert status == 200
        assert headers["transfer-encoding"] == "chunked"
        assert body == b"until close"

    def test_head_response_has_no_body_and_connection_stays_usable(self, mesh: Mesh) -> None:
        with mesh.connect() as sock:
            sock.sendall(b"HEAD /head HTTP/1.1\r\nHost: catalog\r\n\r\n")
            status, headers, _ = recv_response(sock, head_request=True)
            assert status == 200
            assert headers["content-length"] == "1000"
            sock.sendall(b"GET /after HTTP/1.1\r\nHost: catalog\r\n\r\n")
            status, _, body = recv_response(sock)
            assert (status, body) == (200, b"GET /after")

    def test_expect_100_continue_is_relayed(self, mesh: Mesh) -> None:
        """The interim 100 reaches the client, which only then sends its body."""
        with mesh.connect() as sock:
            sock.sendall(
                b"POST /echo HTTP/1.1\r\nHost: catalog\r\ncontent-length: 5\r\n"
                b"expect: 100-continue\r\n\r\n"
            )
            status, _, _ = recv_response(sock)
            assert status == 100
            sock.sendall(b"hello")
            status, _, body = recv_response(sock)
            assert (status, body) == (200, b"hello")

    def test_204_has_no_body(self, mesh: Mesh) -> None:
        with mesh.connect() as sock:
            sock.sendall(b"GET /nocontent HTTP/1.1\r\nHost: catalog\r\n\r\n")
            status, _, _ = recv_response(sock)
            assert status == 204
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: catalog\r\n\r\n")
            assert recv_response(sock)[0] == 200

    def test_keep_alive_and_upstream_connection_reuse(self, mesh: Mesh) -> None:
        """Ten requests on one client connection use one connection to the app."""
        with mesh.connect() as sock:
            for i in range(10):
                sock.sendall(b"GET /n/%d HTTP/1.1\r\nHost: catalog\r\n\r\n" % i)
                status, _, body = recv_response(sock)
                assert (status, body) == (200, b"GET /n/%d" % i)
        assert mesh.app.record.connections == 1
        assert mesh.client.state.outbound_pool.opened == 1

    def test_pipelined_requests_are_answered_in_order(self, mesh: Mesh) -> None:
        with mesh.connect() as sock:
            sock.sendall(b"".join(
                b"GET /p/%d HTTP/1.1\r\nHost: catalog\r\n\r\n" % i for i in range(5)
            ))
            for i in range(5):
                status, _, body = recv_response(sock)
                assert (status, body) == (200, b"GET /p/%d" % i)

    def test_large_response_streams_intact(self, mesh: Mesh) -> None:
        """A 20 MB response arrives byte-exact (backpressure paths exercised)."""
        n = 20_000_000
        status, _, body = mesh.request(b"GET /big/%d HTTP/1.1\r\nHost: catalog\r\n\r\n" % n)
        assert status == 200
        assert body == bytes(i % 251 for i in range(n))

    def test_http10_client_gets_close_delimited_body(self, mesh: Mesh) -> None:
        status, headers, body = mesh.request(b"GET /chunked HTTP/1.0\r\nHost: catalog\r\n\r\n")
        assert status == 200
        assert "transfer-encoding" not in headers
        assert body == b"hello world"


class TestErrors:
    def test_unknown_service(self, mesh: Mesh) -> None:
        mesh.install(snapshot(
            2, {"catalog": [mesh.server.inbound.port]},  # type: ignore[union-attr]
            unknown=["nosuch.default"], source="frontend",
        ))
        status, headers, _ = mesh.request(b"GET / HTTP/1.1\r\nHost: nosuch\r\n\r\n")
        assert status == 404
        assert headers["x-gossamer-error"] == "unknown-service"

    def test_non_mesh_host_is_decided_without_asking_anyone(self, mesh: Mesh) -> None:
        """A name that cannot be a mesh service is never asked of the control plane: here,
        under REGISTRY_ONLY with no Egress naming it, it is refused 403 egress-denied at once
        (under ALLOW_ANY it would leave the mesh: test_mesh_processes' egress test)."""
        asked: list[list[str]] = []
        mesh.client.state.subscribe_hook = asked.append
        snap = snapshot(2, {"catalog": []}, source="frontend")
        snap["outbound"]["egress"] = {"mode": "REGISTRY_ONLY", "hosts": []}
        mesh.install(snap)
        status, headers, _ = mesh.request(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        assert (status, headers["x-gossamer-error"]) == (403, "egress-denied")
        assert asked == []

    def test_service_discovered_on_first_use(self, mesh: Mesh) -> None:
        """A service missing from the table is asked for, and the request waits for the answer."""
        asked: list[list[str]] = []
        port = mesh.server.inbound.port  # type: ignore[union-attr]

        def control_plane_answers(names: list[str]) -> None:
            asked.append(names)
            snap = snapshot(
                3, {"catalog": [port], "orders": [port]}, source="frontend",
                identities={"orders": identity("catalog").uri},
            )
            mesh.lt.loop.call_later(0.05, mesh.client.state.apply_snapshot, 3, snap)

        mesh.client.state.subscribe_hook = control_plane_answers
        status, _, body = mesh.request(b"GET /o HTTP/1.1\r\nHost: orders\r\n\r\n")
        assert asked == [["orders.default"]]
        assert (status, body) == (200, b"GET /o")
        assert "orders.default" in mesh.client.state.subscriptions()

    def test_discovery_timeout_is_explained(self, mesh: Mesh) -> None:
        """With no control plane answering, the caller learns why instead of hanging."""
        status, headers, _ = mesh.request(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
        assert status == 503
        assert headers["x-gossamer-error"] == "discovery-timeout"

    def test_no_endpoints(self, mesh: Mesh) -> None:
        mesh.install(snapshot(2, {"catalog": []}, source="frontend"))
        status, headers, _ = mesh.request(b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")
        assert status == 503
        assert headers["x-gossamer-error"] == "no-healthy-endpoints"

    def test_connect_failure(self, mesh: Mesh) -> None:
        mesh.install(snapshot(2, {"catalog": [free_port()]}, source="frontend"))
        status, headers, body = mesh.request(b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")
        assert status == 502
        assert headers["x-gossamer-error"] == "connect-failed"
        assert b"connect-failed" in body

    def test_connect_failure_moves_to_another_endpoint(self, mesh: Mesh) -> None:
        """A dead endpoint costs nothing: nothing was sent, so another endpoint takes it."""
        live = mesh.server.inbound.port  # type: ignore[union-attr]
        mesh.install(snapshot(2, {"catalog": [free_port(), live]}, source="frontend"))
        for _ in range(20):
            status, _, _ = mesh.request(b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")
            assert status == 200

    def test_upstream_reset_before_response(self, mesh: Mesh) -> None:
        status, headers, _ = mesh.request(b"GET /reset HTTP/1.1\r\nHost: catalog\r\n\r\n")
        assert status == 502
        assert headers["x-gossamer-error"] == "upstream-reset"

    def test_a_safe_request_the_app_dropped_is_sent_to_it_once_more(self, mesh: Mesh) -> None:
        """The app closed a new connection before answering a GET (it died, or restarted):
        the sidecar sends the GET once more and the answer comes. A POST on a new connection
        is not sent again (on a reused one it is, as the connection may have closed while
        idle), and a GET the app keeps dropping goes twice, then 502."""
        status, headers, _ = mesh.request(
            b"POST /reset HTTP/1.1\r\nHost: catalog\r\ncontent-length: 0\r\n\r\n"
        )
        assert (status, headers["x-gossamer-error"]) == (502, "upstream-reset")
        status, _, body = mesh.request(b"GET /reset-once HTTP/1.1\r\nHost: catalog\r\n\r\n")
        assert (status, body) == (200, b"GET /reset-once")
        status, headers, _ = mesh.request(b"GET /reset HTTP/1.1\r\nHost: catalog\r\n\r\n")
        assert (status, headers["x-gossamer-error"]) == (502, "upstream-reset")
        seen = [(method, path) for method, path, _, _ in mesh.app.record.requests]
        assert seen == [("POST", "/reset"), ("GET", "/reset-once"), ("GET", "/reset-once"),
                        ("GET", "/reset"), ("GET", "/reset")]  # fmt: skip

    def test_a_safe_request_a_destination_dropped_goes_to_another_endpoint(
        self, mesh: Mesh
    ) -> None:
        """A destination took the request and closed the connection unanswered (its app died
        while answering): a GET goes to another endpoint, once, and is answered; a POST is
        not sent again, and with no other endpoint a GET is 502 upstream-reset."""
        dropper = Dropper(mesh.lt, mesh.ca, mesh.tmp / "dropper", "catalog")
        live = mesh.server.inbound.port  # type: ignore[union-attr]

        def both(version: int) -> dict[str, Any]:  # round robin: the dropper gets its turns
            snap = snapshot(version, {"catalog": [dropper.port, live]}, source="frontend")
            snap["outbound"]["services"][0]["policy"] = {"load_balancer": {"type": "RoundRobin"}}
            return snap

        mesh.install(both(2))
        get = b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n"
        for _ in range(60):  # until the dropper has had some (the balancer picks)
            status, headers, _ = mesh.request(get)
            assert status == 200, headers
            if dropper.requests >= 2:
                break
        assert dropper.requests >= 2
        mesh.install(snapshot(3, {"catalog": [dropper.port]}, source="frontend"))
        before = dropper.requests
        status, headers, _ = mesh.request(get)
        assert (status, headers["x-gossamer-error"]) == (502, "upstream-reset")
        post = b"POST / HTTP/1.1\r\nHost: catalog\r\ncontent-length: 0\r\n\r\n"
        mesh.install(both(4))
        for _ in range(60):  # until a POST reaches the dropper: it is not sent again
            status, headers, _ = mesh.request(post)
            if status == 502:
                break
            assert status == 200, headers
        assert (status, headers["x-gossamer-error"]) == (502, "upstream-reset")
        assert dropper.requests >= before + 2
        dropper.server.close()

    def test_wrong_upstream_identity_is_refused(self, mesh: Mesh) -> None:
        """The client sidecar checks the destination's SPIFFE ID, not just the CA."""
        mesh.install(snapshot(
            2, {"catalog": [mesh.server.inbound.port]},  # type: ignore[union-attr]
            identities={"catalog": identity("payments").uri}, source="frontend",
        ))
        status, headers, _ = mesh.request(b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")
        assert status == 502
        assert headers["x-gossamer-error"] == "upstream-identity-mismatch"
        assert mesh.app.record.requests == []

    @pytest.mark.parametrize(
        "raw",
        [
            b"GARBAGE\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: catalog\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nHost: catalog\r\ncontent-length: 3\r\n"
            b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost catalog\r\n\r\n",
        ],
        ids=["bad-request-line", "bad-chunk-size", "cl-and-te", "header-without-colon"],
    )
    def test_malformed_request_gets_400_and_close(self, mesh: Mesh, raw: bytes) -> None:
        with mesh.connect() as sock:
            sock.sendall(raw)
            status, headers, _ = recv_response(sock)
            assert status == 400
            assert headers["x-gossamer-error"] == "bad-request"
            assert headers["connection"] == "close"
            assert sock.recv(1) == b""
        # the sidecar survives
        assert mesh.request(b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")[0] == 200

    def test_too_large_headers_get_431(self, mesh: Mesh) -> None:
        raw = b"GET / HTTP/1.1\r\nHost: catalog\r\n" + b"x-big: " + b"a" * 70_000 + b"\r\n\r\n"
        status, headers, _ = mesh.request(raw)
        assert status == 431
        assert headers["x-gossamer-error"] == "headers-too-large"

    def test_plaintext_to_inbound_is_refused(self, unconfigured_mesh: Mesh) -> None:
        """STRICT mTLS: plain HTTP to the inbound port gets 400 mtls-required and a close;
        before any config it gets 503 proxy-not-ready (STRICT or not is not known yet)."""
        mesh = unconfigured_mesh
        assert mesh.server.inbound is not None

        def plain_get() -> tuple[int, str]:
            assert mesh.server.inbound is not None
            port = mesh.server.inbound.port
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")
                status, headers, _ = recv_response(s)
                return status, headers["x-gossamer-error"]

        assert plain_get() == (503, "proxy-not-ready")

        async def strict() -> None:
            mesh.server.state.apply_snapshot(1, snapshot(1, {}, source="catalog"))

        mesh.lt.run(strict())
        assert plain_get() == (400, "mtls-required")
        assert mesh.app.record.requests == []

    def test_mtls_before_any_config_gets_503_not_the_app(self, unconfigured_mesh: Mesh) -> None:
        """A sidecar that has had no config yet knows none of its workload's policies (who
        may call, what is audited): a request over mTLS gets 503 proxy-not-ready, which the
        caller's sidecar may send elsewhere, never the app unchecked. Before: served."""
        mesh = unconfigured_mesh
        status, headers, _ = mesh.request(b"GET /early HTTP/1.1\r\nHost: catalog\r\n\r\n")
        assert (status, headers["x-gossamer-error"]) == (503, "proxy-not-ready")
        assert mesh.app.record.requests == []
        mesh.configure_server(snapshot(1, {}, source="catalog"))
        assert mesh.request(b"GET /late HTTP/1.1\r\nHost: catalog\r\n\r\n")[0] == 200

    def test_tls_without_mesh_certificate_is_refused(self, mesh: Mesh) -> None:
        """A TLS client without a client certificate from the mesh CA cannot get in."""
        assert mesh.server.inbound is not None
        ctx = ssl.create_default_context(cadata=mesh.ca.root_pem.decode())
        ctx.check_hostname = False
        port = mesh.server.inbound.port
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:  # noqa: SIM117
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                with ctx.wrap_socket(raw) as tls:
                    tls.sendall(b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")
                    if not tls.recv(1):
                        raise ConnectionError("closed")
        assert mesh.app.record.requests == []


class TestMetrics:
    def test_requests_are_counted_by_direction_and_code(self, mesh: Mesh) -> None:
        for _ in range(3):
            assert mesh.request(b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")[0] == 200
        out = mesh.client.state.metrics.render().decode()
        assert (
            'gossamer_requests_total{direction="outbound",src_service="frontend",'
            'dst_service="catalog",peer_identity="spiffe://gossamer.local/ns/default/sa/catalog",'
            'code="200"} 3'
        ) in out
        inbound = mesh.server.state.metrics.render().decode()
        assert 'direction="inbound",src_service="frontend",dst_service="catalog"' in inbound
        assert 'le="+Inf"} 3' in inbound


class TestConnectionMemory:
    def test_closed_connections_are_freed_without_the_cyclic_gc(self, mesh: Mesh) -> None:
        """A closed connection's memory (parsers, TLS buffers) goes back at once: it must not
        wait in a reference cycle for a GC that a busy sidecar runs rarely."""

        async def close_and_wait() -> None:
            for sc in (mesh.client, mesh.server):
                sc.state.outbound_pool.close_all()
                sc.state.app_pool.close_all()
            for _ in range(100):
                if not mesh.client.state.connections and not mesh.server.state.connections:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # connection_lost of the closed pool connections

        def traffic() -> None:
            for path in (b"/", b"/chunked", b"/close-delimited", b"/big/70000", b"/nocontent"):
                status, _, _ = mesh.request(b"GET %b HTTP/1.1\r\nHost: catalog\r\n\r\n" % path)
                assert status in (200, 204)
            with mesh.connect() as sock:  # a request the proxy refuses
                sock.sendall(b"GET / HTTP/1.1\r\nHost: catalog\r\nbad header\r\n\r\n")
                assert recv_response(sock)[0] == 400
            mesh.lt.run(close_and_wait())

        garbage = cyclic_garbage(traffic)
        assert not garbage, dict(garbage)


def test_inbound_handshakes_in_waiting_are_bounded(tmp_path: Path) -> None:
    """Connections that open and send nothing wait for their first bytes (10 s); past the
    limit of such waiting connections, new ones are closed at once (issue 11, finding 8)."""
    lt = LoopThread()
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    sidecar = lt.run(start_sidecar(ca, tmp_path / "s", "catalog", None,
                                   max_pending_handshakes=5))  # fmt: skip
    assert sidecar.inbound is not None
    socks = [socket.create_connection(("127.0.0.1", sidecar.inbound.port), timeout=5)
             for _ in range(10)]  # fmt: skip
    try:
        closed = 0
        for sock in socks:
            sock.settimeout(0.5)
            try:
                closed += sock.recv(1) == b""
            except TimeoutError:
                pass
            except ConnectionError:
                closed += 1
        assert closed == 5  # the five over the limit; the others still wait
        assert sidecar.state.metrics.errors[("inbound", "handshake-overflow")] == 5
    finally:
        for sock in socks:
            sock.close()

        lt.run(sidecar.close())
        lt.stop()
