"""Responses the outbound sidecar generates itself, driven through a fake transport (no sockets).

An ``OutboundConnection`` gets a ``FakeTransport`` in ``connection_made`` and request bytes via
``data_received``; the tests read back what was written to the transport and whether it was
closed. Paths that spawn tasks (on-demand discovery) run inside ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from gossamer.proxy import state as state_module
from gossamer.proxy.http1.outbound import OutboundConnection
from gossamer.proxy.http1.upstream import UpstreamConnection
from gossamer.proxy.process.settings import (
    ControlSettings,
    IdentitySettings,
    ListenSettings,
    ProxySettings,
    WorkloadSettings,
)
from gossamer.proxy.state import ProxyState

CATALOG_EP = ("127.0.0.1", 41234)


class FakeTransport(asyncio.Transport):
    """Records what the protocol writes and whether it closed, aborted or paused reading."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def responses(data: bytes | bytearray, *, head_only: bool = False) -> list[Response]:
    """Split the bytes a transport received into responses framed by Content-Length."""
    out: list[Response] = []
    rest = bytes(data)
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {head!r}"
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }
        length = 0 if head_only else int(headers["content-length"])
        out.append(Response(int(lines[0].split(" ")[1]), headers, rest[:length]))
        rest = rest[length:]
    return out


def settings(default_service: str | None = None, max_connections: int = 4096) -> ProxySettings:
    return ProxySettings(
        workload=WorkloadSettings(service="frontend"),
        listen=ListenSettings(default_service=default_service, max_connections=max_connections),
        control=ControlSettings(),
        identity=IdentitySettings(workdir=Path("/nonexistent/gossamer-test")),
    )


def snapshot(version: int = 1, *, unknown: list[str] | None = None) -> dict[str, Any]:
    """A snapshot as in docs/internals.md §5: catalog with one endpoint, empty 'empty'."""
    return {
        "version": version,
        "trust_domain": "gossamer.local",
        "proxy": {
            "service": "frontend",
            "namespace": "default",
            "identity": "spiffe://gossamer.local/ns/default/sa/frontend",
        },
        "inbound": {"mtls": "STRICT"},
        "outbound": {
            "services": [
                {
                    "name": "catalog",
                    "namespace": "default",
                    "identity": "spiffe://gossamer.local/ns/default/sa/catalog",
                    "protocol": "http",
                    "endpoints": [{"address": CATALOG_EP[0], "port": CATALOG_EP[1], "labels": {}}],
                },
                {
                    "name": "empty",
                    "namespace": "default",
                    "identity": "spiffe://gossamer.local/ns/default/sa/empty",
                    "endpoints": [],
                },
            ],
            "unknown": ["nosuch.default", *(unknown or [])],
        },
    }


def connect(*, with_table: bool = False) -> tuple[ProxyState, OutboundConnection, FakeTransport]:
    state = ProxyState(settings())
    if with_table:
        state.apply_snapshot(1, snapshot())
    conn = OutboundConnection(state)
    transport = FakeTransport()
    conn.connection_made(transport)
    return state, conn, transport


def pooled_upstream(state: ProxyState) -> FakeTransport:
    """Put an idle upstream connection to the catalog endpoint into the pool; its transport."""
    upstream = UpstreamConnection(state.outbound_pool, CATALOG_EP)
    transport = FakeTransport()
    upstream.connection_made(transport)
    state.outbound_pool.release(upstream)
    return transport


def only_response(transport: FakeTransport) -> Response:
    answers = responses(transport.data)
    assert len(answers) == 1, f"expected one response, got {bytes(transport.data)!r}"
    return answers[0]


class TestRefusedRequests:
    def test_malformed_request_line_gets_400_and_close(self) -> None:
        """A request line that is not HTTP is answered 400 bad-request and the connection closed."""
        state, conn, transport = connect()
        conn.data_received(b"GARBAGE\r\n\r\n")
        resp = only_response(transport)
        assert resp.status == 400
        assert resp.headers["x-gossamer-error"] == "bad-request"
        assert resp.headers["connection"] == "close"
        assert transport.closed
        assert state.metrics.errors[("outbound", "bad-request")] == 1

    @pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9"])
    def test_a_request_line_of_another_http_version_is_refused(self, version: bytes) -> None:
        """Only HTTP/1.0 and HTTP/1.1 are HTTP/1 (issue 11, lows): 505, then close."""
        _, conn, transport = connect(with_table=True)
        conn.data_received(b"GET / " + version + b"\r\nHost: catalog\r\n\r\n")
        resp = only_response(transport)
        assert resp.status == 505
        assert resp.headers["x-gossamer-error"] == "http-version-not-supported"
        assert transport.closed

    def test_more_than_one_host_header_is_refused(self) -> None:
        """Two Host headers would route on one and forward both (RFC 9112 3.2: 400), issue 11
        lows; the upstream never sees the request."""
        state, conn, transport = connect(with_table=True)
        upstream = pooled_upstream(state)
        conn.data_received(b"GET / HTTP/1.1\r\nHost: catalog\r\nHost: admin\r\n\r\n")
        resp = only_response(transport)
        assert resp.status == 400 and resp.headers["x-gossamer-error"] == "bad-request"
        assert bytes(upstream.data) == b""

    def test_transfer_encoding_in_an_http10_request_is_refused(self) -> None:
        """HTTP/1.0 has no chunked framing: a Transfer-Encoding there is a smuggling attempt
        (RFC 9112 6.1), answered 400 and closed, never forwarded (issue 11, lows)."""
        state, conn, transport = connect(with_table=True)
        upstream = pooled_upstream(state)
        conn.data_received(
            b"POST / HTTP/1.0\r\nHost: catalog\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        resp = only_response(transport)
        assert resp.status == 400 and resp.headers["x-gossamer-error"] == "bad-request"
        assert bytes(upstream.data) == b""
        assert transport.closed

    def test_header_block_over_64k_gets_431(self) -> None:
        """More than 64 KiB of headers is answered 431 headers-too-large and closed."""
        _, conn, transport = connect()
        headers = b"".join(b"x-filler-%d: %b\r\n" % (i, b"v" * 1000) for i in range(70))
        conn.data_received(b"GET / HTTP/1.1\r\nHost: catalog\r\n" + headers + b"\r\n")
        resp = only_response(transport)
        assert resp.status == 431
        assert resp.headers["x-gossamer-error"] == "headers-too-large"
        assert transport.closed

    def test_header_block_under_the_limit_is_accepted(self) -> None:
        """A 60 KiB header block passes the limit (the request reaches routing: 503, not 431)."""
        _, conn, transport = connect()
        headers = b"".join(b"x-filler-%d: %b\r\n" % (i, b"v" * 1000) for i in range(60))
        conn.data_received(b"GET / HTTP/1.1\r\nHost: catalog\r\n" + headers + b"\r\n")
        assert only_response(transport).status == 503

    def test_uri_over_16k_gets_414(self) -> None:
        """A request target over 16 KiB is answered 414 uri-too-long and closed."""
        _, conn, transport = connect()
        conn.data_received(b"GET /" + b"a" * 17_000 + b" HTTP/1.1\r\nHost: catalog\r\n\r\n")
        resp = only_response(transport)
        assert resp.status == 414
        assert resp.headers["x-gossamer-error"] == "uri-too-long"
        assert transport.closed

    def test_long_uri_split_across_reads_gets_414(self) -> None:
        """The URI limit holds when the target arrives in many small pieces."""
        _, conn, transport = connect()
        pieces = [b"GET /", *[b"b" * 1000] * 20, b" HTTP/1.1\r\nHost: catalog\r\n\r\n"]
        for piece in pieces:
            if transport.is_closing():
                break  # a real transport delivers nothing more after close()
            conn.data_received(piece)
        assert only_response(transport).status == 414
        assert transport.closed

    def test_missing_host_gets_400(self) -> None:
        """An HTTP/1.1 request without Host is answered 400 bad-request."""
        _, conn, transport = connect(with_table=True)
        conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
        resp = only_response(transport)
        assert (resp.status, resp.headers["x-gossamer-error"]) == (400, "bad-request")
        assert transport.closed

    def test_https_absolute_target_gets_400(self) -> None:
        """An https:// absolute-form target is refused with 400 bad-request."""
        _, conn, transport = connect(with_table=True)
        conn.data_received(b"GET https://catalog/ HTTP/1.1\r\nHost: catalog\r\n\r\n")
        resp = only_response(transport)
        assert (resp.status, resp.headers["x-gossamer-error"]) == (400, "bad-request")


class TestRoutingErrors:
    def test_no_config_gets_503_proxy_not_ready(self) -> None:
        """Before any config is installed, requests get 503 proxy-not-ready; keep-alive stays."""
        state, conn, transport = connect()
        conn.data_received(b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")
        resp = only_response(transport)
        assert resp.status == 503
        assert resp.headers["x-gossamer-error"] == "proxy-not-ready"
        assert resp.headers["x-request-id"]
        assert "connection" not in resp.headers
        assert not transport.closed
        assert not conn.queue
        assert state.metrics.errors[("outbound", "proxy-not-ready")] == 1

    def test_request_id_is_passed_back_on_errors(self) -> None:
        """An x-request-id sent by the app comes back on the proxy's error response."""
        _, conn, transport = connect()
        conn.data_received(b"GET / HTTP/1.1\r\nHost: catalog\r\nX-Request-Id: abc-123\r\n\r\n")
        assert only_response(transport).headers["x-request-id"] == "abc-123"

    def test_pipelined_requests_are_answered_in_order(self) -> None:
        """Two requests in one read each get their own answer, in order."""
        _, conn, transport = connect(with_table=True)
        conn.data_received(
            b"GET / HTTP/1.1\r\nHost: nosuch\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: empty\r\nX-Request-Id: second\r\n\r\n"
        )
        first, second = responses(transport.data)
        assert (first.status, first.headers["x-gossamer-error"]) == (404, "unknown-service")
        assert (second.status, second.headers["x-gossamer-error"]) == (503, "no-healthy-endpoints")
        assert second.headers["x-request-id"] == "second"

    def test_unknown_single_name_gets_404_unknown_service(self) -> None:
        """With a table installed, ``Host: nosuch`` (no dot: only a mesh service could
        be meant) is 404 unknown-service."""
        state, conn, transport = connect(with_table=True)
        conn.data_received(b"GET / HTTP/1.1\r\nHost: nosuch\r\n\r\n")
        resp = only_response(transport)
        assert (resp.status, resp.headers["x-gossamer-error"]) == (404, "unknown-service")
        assert b"nosuch" in resp.body
        assert not transport.closed
        assert state.metrics.errors[("outbound", "unknown-service")] == 1

    def test_a_host_outside_the_mesh_no_egress_names_gets_403(self) -> None:
        """Issue 12, item 6: under REGISTRY_ONLY, ``Host: www.example.com`` (outside the
        mesh, named by no Egress) is 403 egress-denied; a host an Egress names leaves."""
        state = ProxyState(settings())
        snap = snapshot()
        snap["outbound"]["egress"] = {
            "mode": "REGISTRY_ONLY", "hosts": [{"host": "*.example.org", "ports": []}]
        }  # fmt: skip
        state.apply_snapshot(1, snap)
        conn, transport = OutboundConnection(state), FakeTransport()
        conn.connection_made(transport)
        conn.data_received(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        resp = only_response(transport)
        assert (resp.status, resp.headers["x-gossamer-error"]) == (403, "egress-denied")
        table = state.table
        assert table is not None and table.make_external is not None
        allowed = table.egress.service(b"api.example.org:8080", table.make_external)
        assert allowed is not None and allowed.external
        assert allowed.endpoints_all[0].pool_key == ("api.example.org", 8080)

    def test_service_the_control_plane_called_unknown_gets_404(self) -> None:
        """A name listed under outbound.unknown is answered 404 without asking again."""
        state, conn, transport = connect(with_table=True)
        asked: list[list[str]] = []
        state.subscribe_hook = asked.append
        conn.data_received(b"GET / HTTP/1.1\r\nHost: nosuch.default.svc\r\n\r\n")
        assert only_response(transport).status == 404
        assert asked == []

    def test_service_without_endpoints_gets_503(self) -> None:
        """A known service with no endpoints is 503 no-healthy-endpoints."""
        _, conn, transport = connect(with_table=True)
        conn.data_received(b"GET / HTTP/1.1\r\nHost: empty\r\n\r\n")
        resp = only_response(transport)
        assert (resp.status, resp.headers["x-gossamer-error"]) == (503, "no-healthy-endpoints")

    def test_head_request_error_has_no_body(self) -> None:
        """An error answering HEAD carries the head only."""
        _, conn, transport = connect(with_table=True)
        conn.data_received(b"HEAD / HTTP/1.1\r\nHost: nosuch\r\n\r\n")
        (resp,) = responses(transport.data, head_only=True)
        assert resp.status == 404
        assert bytes(transport.data).endswith(b"\r\n\r\n")

    def test_unanswered_body_closes_the_connection(self) -> None:
        """An error sent before the request body was read says ``connection: close``."""
        _, conn, transport = connect(with_table=True)
        conn.data_received(
            b"POST / HTTP/1.1\r\nHost: nosuch\r\nContent-Length: 10\r\n\r\nabc"
        )
        resp = only_response(transport)
        assert resp.status == 404
        assert resp.headers["connection"] == "close"
        assert transport.closed


class TestUpgrade:
    UPGRADE = (
        b"GET /socket HTTP/1.1\r\nHost: catalog\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n"
    )

    def test_upgrade_request_gets_a_single_answer_then_close(self) -> None:
        """An Upgrade request that cannot be routed gets exactly one answer and the connection
        closes (it was to become a tunnel)."""
        _, conn, transport = connect()
        conn.data_received(self.UPGRADE)
        resp = only_response(transport)
        assert (resp.status, resp.headers["x-gossamer-error"]) == (503, "proxy-not-ready")
        assert transport.closed

    def test_plain_request_is_written_to_a_pooled_upstream(self) -> None:
        """Control for the next test: a plain request goes to the idle pooled upstream, with
        the spoofable peer-identity header removed."""
        state, conn, _ = connect(with_table=True)
        upstream = pooled_upstream(state)
        conn.data_received(
            b"GET /items HTTP/1.1\r\nHost: catalog\r\nX-Gossamer-Peer-Identity: spoof\r\n\r\n"
        )
        sent = bytes(upstream.data)
        assert sent.startswith(b"GET /items HTTP/1.1\r\n")
        assert b"host: catalog" in sent.lower()
        assert b"peer-identity" not in sent.lower()

    def test_upgrade_request_is_forwarded_with_its_upgrade_headers(self) -> None:
        """Upgrade and Connection are hop-by-hop, but an upgrade request re-states them for the
        next hop, so the upgrade (e.g. WebSocket) can pass through."""
        state, conn, _ = connect(with_table=True)
        upstream = pooled_upstream(state)
        conn.data_received(self.UPGRADE + b"early-frame")
        sent = bytes(upstream.data)
        head, _, rest = sent.partition(b"\r\n\r\n")
        assert head.startswith(b"GET /socket HTTP/1.1\r\n")
        assert b"connection: upgrade" in head.lower()
        assert b"upgrade: websocket" in head.lower()
        # Bytes after the upgrade request wait for the 101 (issue 11, finding 1) ...
        assert rest == b""
        exchange = conn.queue[0]
        assert exchange.upstream is not None
        exchange.upstream.data_received(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket"
            b"\r\n\r\n"
        )
        # ... and then go on, first in the tunnel.
        assert bytes(upstream.data).endswith(b"\r\n\r\nearly-frame")


class TestDiscovery:
    def test_new_service_is_discovered_then_answered_404_when_unknown(self) -> None:
        """A name not in the table is subscribed for; the snapshot calling it unknown gives 404."""
        state, conn, transport = connect(with_table=True)
        asked: list[list[str]] = []
        state.subscribe_hook = asked.append

        async def scenario() -> None:
            conn.data_received(b"GET / HTTP/1.1\r\nHost: payments\r\n\r\n")
            for _ in range(3):
                await asyncio.sleep(0)
            assert asked == [["payments.default"]]
            assert transport.data == b""
            state.apply_snapshot(2, snapshot(2, unknown=["payments.default"]))
            for _ in range(10):
                if transport.data:
                    break
                await asyncio.sleep(0)

        asyncio.run(asyncio.wait_for(scenario(), 2))
        resp = only_response(transport)
        assert (resp.status, resp.headers["x-gossamer-error"]) == (404, "unknown-service")
        # Answered: not carried into the next hello (issue 11, finding 3: made-up names must
        # not pile up in the subscriptions until the control plane refuses them all).
        assert "payments.default" not in state.subscriptions()

    def test_an_unknown_answer_is_trusted_for_a_while_then_asked_again(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Within the negative TTL the unknown answer is given at once; after it, the name is
        asked again (it may exist by now)."""
        state, conn, transport = connect(with_table=True)
        asked: list[list[str]] = []
        state.subscribe_hook = asked.append
        state.apply_snapshot(2, snapshot(2, unknown=["payments.default"]))
        conn.data_received(b"GET / HTTP/1.1\r\nHost: payments\r\n\r\n")
        assert only_response(transport).status == 404 and asked == []
        monkeypatch.setattr(state_module, "NEGATIVE_TTL", 0.0)

        async def scenario() -> None:
            again, transport2 = OutboundConnection(state), FakeTransport()
            again.connection_made(transport2)
            again.data_received(b"GET / HTTP/1.1\r\nHost: payments\r\n\r\n")
            await asyncio.sleep(0)
            assert asked == [["payments.default"]]
            again.connection_lost(None)

        asyncio.run(asyncio.wait_for(scenario(), 2))

    def test_discovery_timeout_gets_503(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """When the control plane does not answer in time, the request gets 503
        discovery-timeout."""
        monkeypatch.setattr(state_module, "DISCOVERY_TIMEOUT", 0.05)
        _, conn, transport = connect(with_table=True)

        async def scenario() -> None:
            conn.data_received(b"GET / HTTP/1.1\r\nHost: payments\r\n\r\n")
            deadline = time.monotonic() + 2
            while not transport.data and time.monotonic() < deadline:
                await asyncio.sleep(0.01)

        asyncio.run(scenario())
        resp = only_response(transport)
        assert (resp.status, resp.headers["x-gossamer-error"]) == (503, "discovery-timeout")


class TestConnectionCap:
    def test_connections_past_the_cap_are_closed_at_once(self) -> None:
        """Issue 11, finding 8: a global cap on open connections (HTTP connections and TCP
        relays together); beyond it a new connection is cut and counted."""
        state = ProxyState(settings(max_connections=2))
        transports = []
        for _ in range(3):
            conn = OutboundConnection(state)
            transport = FakeTransport()
            conn.connection_made(transport)
            transports.append(transport)
        assert [t.aborted for t in transports] == [False, False, True]
        assert state.metrics.errors[("outbound", "connection-overflow")] == 1
        state.tcp_open = 1  # a TCP relay counts too
        conn = OutboundConnection(state)
        transport = FakeTransport()
        conn.connection_made(transport)
        assert transport.aborted


class TestSweep:
    def test_stalled_request_head_gets_408(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A request head not finished within HEADER_TIMEOUT is answered 408 and closed."""
        monkeypatch.setattr(state_module, "HEADER_TIMEOUT", 0.005)
        state, conn, transport = connect()
        conn.data_received(b"GET / HTTP/1.1\r\nHost: cat")
        time.sleep(0.02)
        state.sweep()
        resp = only_response(transport)
        assert (resp.status, resp.headers["x-gossamer-error"]) == (408, "request-header-timeout")
        assert transport.closed

    def test_a_stalled_request_body_gets_408(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A body that stops arriving holds the connection (and the upstream's) no longer than
        BODY_TIMEOUT without progress: 408 and close (issue 11, finding 8)."""
        monkeypatch.setattr(state_module, "BODY_TIMEOUT", 0.005)
        state, conn, transport = connect(with_table=True)
        pooled_upstream(state)
        conn.data_received(b"POST / HTTP/1.1\r\nHost: catalog\r\nContent-Length: 100\r\n\r\nab")
        state.sweep()  # progress seen: the clock starts
        time.sleep(0.02)
        state.sweep()
        resp = only_response(transport)
        assert (resp.status, resp.headers["x-gossamer-error"]) == (408, "request-body-timeout")
        assert transport.closed

    def test_a_body_that_keeps_coming_is_left_alone(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(state_module, "BODY_TIMEOUT", 0.05)
        state, conn, transport = connect(with_table=True)
        pooled_upstream(state)
        conn.data_received(b"POST / HTTP/1.1\r\nHost: catalog\r\nContent-Length: 100\r\n\r\n")
        for _ in range(5):
            conn.data_received(b"0123456789")
            state.sweep()
            time.sleep(0.02)
        assert transport.data == b"" and not transport.closed

    def test_a_response_that_stops_coming_gets_504(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An upstream that sends nothing for STREAM_IDLE_TIMEOUT (and no policy timeout is
        set) holds the connection no longer: 504 upstream-idle-timeout, upstream closed
        (issue 11, finding 8)."""
        monkeypatch.setattr(state_module, "STREAM_IDLE_TIMEOUT", 0.005)
        state, conn, transport = connect(with_table=True)
        upstream = pooled_upstream(state)
        conn.data_received(b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")
        assert upstream.data  # the request went out; no answer comes
        state.sweep()  # the clock starts
        time.sleep(0.02)
        state.sweep()
        resp = only_response(transport)
        assert (resp.status, resp.headers["x-gossamer-error"]) == (504, "upstream-idle-timeout")
        assert transport.closed and upstream.closed

    def test_a_response_that_keeps_coming_is_left_alone(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(state_module, "STREAM_IDLE_TIMEOUT", 0.05)
        state, conn, transport = connect(with_table=True)
        pooled_upstream(state)
        conn.data_received(b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")
        upstream = conn.queue[0].upstream
        assert upstream is not None
        upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(5):
            upstream.data_received(b"0123456789")
            state.sweep()
            time.sleep(0.02)
        assert not transport.closed
        assert b"504" not in bytes(transport.data)

    def test_request_head_within_timeout_is_left_alone(self) -> None:
        """A partial head younger than HEADER_TIMEOUT is neither answered nor closed."""
        state, conn, transport = connect()
        conn.data_received(b"GET / HTTP/1.1\r\nHost: cat")
        state.sweep()
        assert transport.data == b""
        assert not transport.closed

    def test_idle_keep_alive_connection_is_closed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A connection with nothing in progress for IDLE_TIMEOUT is closed without a response."""
        monkeypatch.setattr(state_module, "IDLE_TIMEOUT", 0.005)
        state, _, transport = connect()
        time.sleep(0.02)
        state.sweep()
        assert transport.closed
        assert transport.data == b""

    def test_recently_active_connection_is_kept(self) -> None:
        """A connection that just finished a request is kept open by the sweep."""
        state, conn, transport = connect()
        conn.data_received(b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")
        state.sweep()
        assert not transport.closed
