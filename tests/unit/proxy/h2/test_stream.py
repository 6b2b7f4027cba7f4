"""Relay rules of one proxied stream, with in-memory sessions on both sides (no sockets)."""

from __future__ import annotations

from typing import Any

from gossamer.protocol.h2.session import CLOSED, DATA, HEADERS, REFUSED_STREAM, H2Session
from gossamer.proxy.h2.headers import GRPC_CANCELLED
from gossamer.proxy.h2.stats import GrpcMetrics
from gossamer.proxy.h2.stream import ProxiedStream
from gossamer.proxy.observe.metrics import Metrics
from tests.unit.proxy.h2.pairs import REQUEST, of_kind, pair, settle

CANCEL_CODE = 8


class FakeProxy:
    def __init__(self) -> None:
        self.metrics = Metrics("frontend", "default")


class FakeDown:
    """The downstream connection as a stream sees it: a server session and a router."""

    direction = "outbound"

    def __init__(self, session: H2Session) -> None:
        self.session = session
        self.proxy = FakeProxy()
        self.grpc_stats = GrpcMetrics()
        self.routed: list[ProxiedStream] = []
        self.wire = bytearray()  # what a flush wrote to the client

    def schedule_flush(self) -> None:
        pass

    def flush(self) -> None:
        self.wire += self.session.data_to_send()

    def reroute(self, stream: ProxiedStream, avoid: object = None) -> None:
        self.routed.append(stream)


class FakeUp:
    def __init__(self, session: H2Session) -> None:
        self.session = session
        self.streams: dict[int, ProxiedStream] = {}

    def schedule_flush(self) -> None:
        pass


def sides() -> tuple[H2Session, FakeDown, FakeUp, H2Session]:
    """app-side client → (down server | up client) → upstream server, all handshaken."""
    app, down_server = pair()
    up_client, upstream = pair()
    settle(app, down_server)
    settle(up_client, upstream)
    return app, FakeDown(down_server), FakeUp(up_client), upstream


def open_stream(app: H2Session, down: FakeDown, *, grpc: bool = False) -> ProxiedStream:
    sid, _ = app.submit_request(REQUEST, end_stream=False)
    app.send_data(sid, b"body")
    _, got = settle(app, down.session)
    stream = ProxiedStream(
        down, sid, list(REQUEST), authority=b"catalog", request_id=b"r1", grpc=grpc,
        is_head=False, ended=False,
    )  # type: ignore[arg-type]  # fmt: skip
    for event in of_kind(got, DATA):
        stream.request_data(event[2])
    return stream


def test_body_received_before_the_upstream_exists_is_sent_on_attach() -> None:
    """Bytes buffered while connecting go out first, then the stream continues."""
    app, down, up, upstream = sides()
    stream = open_stream(app, down)
    stream.attach(up)  # type: ignore[arg-type]
    stream.request_data(b"-more")
    stream.request_end()
    _, got = settle(up.session, upstream)
    assert b"".join(e[2] for e in of_kind(got, DATA)) == b"body-more"


def test_refused_stream_is_started_again_once_with_its_body() -> None:
    """REFUSED_STREAM before anything was sent re-routes the stream, body intact; a second
    refusal answers 502 upstream-reset."""
    app, down, up, _ = sides()
    stream = open_stream(app, down)
    stream.attach(up)  # type: ignore[arg-type]
    out = stream.up_out
    stream.upstream_closed(REFUSED_STREAM, out)
    assert down.routed == [stream]
    assert stream.req_buf == [b"body"]
    stream.attach(up)  # type: ignore[arg-type]
    stream.upstream_closed(REFUSED_STREAM, stream.up_out)
    assert down.routed == [stream]
    back, _ = settle(app, down.session)
    assert of_kind(back, HEADERS)[0][2][0] == (b":status", b"502")
    assert stream.done and stream.status == 502


def test_upstream_reset_after_the_response_started_resets_the_client_stream() -> None:
    """A reset mid-response reaches the client as RST_STREAM with the upstream's code."""
    app, down, up, _ = sides()
    stream = open_stream(app, down)
    stream.attach(up)  # type: ignore[arg-type]
    stream.response_headers([(b":status", b"200")], False)
    stream.response_data(b"partial")
    stream.upstream_closed(11, None)
    back = app.receive(bytes(down.wire))
    more, _ = settle(app, down.session)
    back += more
    assert of_kind(back, HEADERS)[0][2] == [(b":status", b"200")]
    assert any(e[0] == CLOSED and e[2] == 11 for e in back)


def test_client_reset_cancels_upstream_and_counts_grpc_cancelled() -> None:
    """A client reset sends CANCEL upstream; a gRPC call is counted as CANCELLED."""
    app, down, up, upstream = sides()
    stream = open_stream(app, down, grpc=True)
    stats = down.proxy.metrics.route("outbound", "frontend", "catalog", "x")
    stream.stats = stats
    stream.attach(up)  # type: ignore[arg-type]
    settle(up.session, upstream)
    stream.downstream_closed(8, None)
    _, got = settle(up.session, upstream)
    assert any(e[0] == CLOSED and e[2] == 8 for e in got)
    assert down.grpc_stats.count(stats, GRPC_CANCELLED) == 1


def test_response_bytes_are_credited_upstream_only_as_they_leave() -> None:
    """Response DATA is credited to the upstream when the client side takes it for sending."""
    app, down, up, _upstream = sides()
    stream = open_stream(app, down)
    stream.attach(up)  # type: ignore[arg-type]
    stream.response_headers([(b":status", b"200")], False)
    credited: list[int] = []
    real_consume = up.session.consume

    def consume(sid: int, n: int) -> None:
        credited.append(n)
        real_consume(sid, n)

    up.session.consume = consume  # type: ignore[method-assign]
    stream.response_data(b"x" * 1000)
    assert credited == []
    down.session.data_to_send()
    assert credited == [1000]


def test_a_stalled_request_body_is_answered_408_then_reset() -> None:
    """Issue 11, finding 8: a stream whose body stopped arriving is answered 408
    request-body-timeout (the upstream is cancelled); if the client still holds its half of
    the stream open at the next sweep, it is reset."""
    app, down, up, upstream = sides()
    stream = open_stream(app, down)
    stream.attach(up)  # type: ignore[arg-type]
    stream.stalled(408, "request-body-timeout", "the request body stopped arriving")
    back, _ = settle(app, down.session)
    head = dict(of_kind(back, HEADERS)[0][2])
    assert head[b":status"] == b"408"
    assert head[b"x-gossamer-error"] == b"request-body-timeout"
    assert stream.done
    _, at_upstream = settle(up.session, upstream)
    assert not of_kind(at_upstream, DATA)  # the upstream try is cancelled, nothing more goes
    stream.reset_held()  # the next sweep: still open on the client's side
    back, _ = settle(app, down.session)
    assert [e[2] for e in of_kind(back, CLOSED)] == [CANCEL_CODE]


def test_a_stalled_response_already_started_is_cut() -> None:
    """Once the response started, a stall cuts the stream (gRPC: DEADLINE_EXCEEDED)."""
    app, down, up, _upstream = sides()
    stream = open_stream(app, down, grpc=True)
    stream.attach(up)  # type: ignore[arg-type]
    stream.request_end()
    stream.commit([(b":status", b"200"), (b"content-type", b"application/grpc")], False)
    stream.stalled(504, "upstream-idle-timeout", "no bytes either way for too long")
    back, _ = settle(app, down.session)
    trailers = dict(of_kind(back, HEADERS)[-1][2])
    assert trailers[b"grpc-status"] == b"4"
    assert stream.done and stream.status == 504


class _Stuck:
    """What the connection's sweep reads of a stream, and whether it was called stalled."""

    def __init__(self, *, req_ended: bool, grpc: bool = False, done: bool = False) -> None:
        self.moved, self.moved_mark, self.moved_since = 0, 0, 0
        self.req_ended, self.grpc, self.done = req_ended, grpc, done
        self.calls: list[tuple[int, str]] = []

    def stalled(self, status: int, cause: str, detail: str) -> None:
        self.calls.append((status, cause))


def test_the_connection_sweep_picks_the_right_timeout() -> None:
    """Request body unfinished: ``body_ns``, except gRPC; request whole: ``stream_ns``;
    bytes that moved since the last sweep restart the clock."""
    from pathlib import Path

    from gossamer.proxy.h2.downstream import H2Outbound
    from gossamer.proxy.process.settings import (
        ControlSettings,
        IdentitySettings,
        ListenSettings,
        ProxySettings,
        WorkloadSettings,
    )  # fmt: skip
    from gossamer.proxy.state import ProxyState

    state = ProxyState(ProxySettings(
        workload=WorkloadSettings(service="frontend"), listen=ListenSettings(),
        control=ControlSettings(), identity=IdentitySettings(workdir=Path("/nonexistent")),
    ))  # fmt: skip
    conn = H2Outbound(state)
    body, grpc, whole, moving = (
        _Stuck(req_ended=False), _Stuck(req_ended=False, grpc=True), _Stuck(req_ended=True),
        _Stuck(req_ended=False),
    )  # fmt: skip
    moving.moved = 10
    conn.streams.update({1: body, 3: grpc, 5: whole, 7: moving})  # type: ignore[dict-item]
    conn.sweep(100, head_ns=1, idle_ns=1, body_ns=50, stream_ns=500)
    assert body.calls == [(408, "request-body-timeout")]
    assert grpc.calls == [] and whole.calls == [] and moving.calls == []
    assert moving.moved_since == 100
    conn.sweep(600, head_ns=1, idle_ns=1, body_ns=50, stream_ns=500)
    assert whole.calls == [(504, "upstream-idle-timeout")]
    assert grpc.calls == [(504, "upstream-idle-timeout")]
    conn.session.close()


def _catalog_service() -> Any:
    """A real compiled service with two endpoints (the snapshot as the control plane sends)."""
    from gossamer.proxy.snapshot.table import compile_snapshot

    endpoints = [{"address": "127.0.0.1", "port": p, "labels": {}} for p in (41001, 41002)]
    table = compile_snapshot({  # type: ignore[typeddict-item]
        "version": 1, "trust_domain": "gossamer.local",
        "proxy": {"service": "frontend", "namespace": "default", "identity": "x"},
        "outbound": {"services": [{
            "name": "catalog", "namespace": "default", "protocol": "http2",
            "identity": "spiffe://gossamer.local/ns/default/sa/catalog",
            "endpoints": endpoints}], "unknown": []},
    }, metrics=Metrics("frontend", "default"), previous=None)  # fmt: skip
    return table.services["catalog.default"]


def test_a_stream_no_app_saw_goes_to_another_endpoint() -> None:
    """Issue 12, item 2: a 502 whose x-gossamer-error says the destination's app was never
    reached (app-unreachable) is not forwarded: the endpoint is penalised and the stream,
    which sent no body, is routed again away from it."""
    app, down, up, _upstream = sides()
    sid, _ = app.submit_request(REQUEST, end_stream=True)
    _, _got = settle(app, down.session)
    stream = ProxiedStream(
        down, sid, list(REQUEST), authority=b"catalog", request_id=b"r1", grpc=False,
        is_head=False, ended=True,
    )  # type: ignore[arg-type]  # fmt: skip
    service = _catalog_service()
    endpoint = service.balancer.endpoints[0]
    stream.service, stream.endpoint = service, endpoint
    endpoint.pending += 1
    stream.attach(up)  # type: ignore[arg-type]
    stream.response_headers(
        [(b":status", b"502"), (b"x-gossamer-error", b"app-unreachable")], True
    )
    assert down.routed == [stream]  # routed again (FakeDown records it)
    assert not stream.resp_started and stream.status == 0
    assert endpoint.pending == 0
    other = [(b":status", b"502"), (b"x-gossamer-error", b"upstream-reset")]
    stream.endpoint = endpoint
    stream.response_headers(other, True)  # not a cause that says no app saw it: forwarded
    back, _ = settle(app, down.session)
    assert dict(of_kind(back, HEADERS)[0][2])[b":status"] == b"502"


def test_no_endpoint_says_why() -> None:
    """A route to a version no endpoint carries is told apart from a service with no healthy
    endpoint (issue 12, item 9)."""
    from gossamer.proxy.pipeline.concrete import no_endpoint

    service = _catalog_service()
    assert no_endpoint(service, (("version", "v2"),)) == (
        "no-subset-endpoints", "catalog.default has no endpoint labelled version=v2"
    )
    assert no_endpoint(service, ())[0] == "no-healthy-endpoints"
