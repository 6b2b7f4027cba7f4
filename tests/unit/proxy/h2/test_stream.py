"""Relay rules of one proxied stream, with in-memory sessions on both sides (no sockets)."""

from __future__ import annotations

from gossamer.protocol.h2.session import CLOSED, DATA, HEADERS, REFUSED_STREAM, H2Session
from gossamer.proxy.h2.headers import GRPC_CANCELLED
from gossamer.proxy.h2.stats import GrpcMetrics
from gossamer.proxy.h2.stream import ProxiedStream
from gossamer.proxy.observe.metrics import Metrics
from tests.unit.proxy.h2.pairs import REQUEST, of_kind, pair, settle


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
