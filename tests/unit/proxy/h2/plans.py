"""A sans-socket outbound stage for plan tests: the app's client session, a downstream that
routes through ``plan.route``, and one real ``H2Upstream`` (no transport) per upstream try,
each paired with an in-memory server session the test answers from."""

from __future__ import annotations

import asyncio
from typing import Any

from gossamer.protocol.h2.session import DATA, END, HEADERS, Event, H2Session, Header
from gossamer.proxy.h2.downstream import H2Outbound
from gossamer.proxy.h2.headers import scan_request
from gossamer.proxy.h2.limits import StreamAccount
from gossamer.proxy.h2.stats import GrpcMetrics
from gossamer.proxy.h2.stream import ProxiedStream
from gossamer.proxy.h2.upstream import H2Pool, H2Upstream
from gossamer.proxy.observe.metrics import Metrics
from gossamer.proxy.pipeline.balancer import EndpointAddr, EndpointState
from gossamer.proxy.pipeline.outbound import route
from gossamer.proxy.snapshot.http_rules import HttpRouter
from gossamer.proxy.snapshot.service_policy import ServicePolicy
from gossamer.proxy.snapshot.table import OutboundService
from tests.unit.proxy.h2.pairs import pair, settle

GRPC_CALL = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"catalog"),
    (b":path", b"/test.Echo/Unary"),
    (b"content-type", b"application/grpc"),
]
GRPC_HEAD = [(b":status", b"200"), (b"content-type", b"application/grpc")]


def grpc_only(code: int) -> list[Header]:
    """A trailers-only gRPC response with ``code``."""
    return [*GRPC_HEAD, (b"grpc-status", b"%d" % code)]


def service(policy: dict[str, Any] | None = None, routes: list[Any] | None = None,
            endpoints: int = 2) -> OutboundService:  # fmt: skip
    """``catalog.default`` with ``endpoints`` endpoints and the given snapshot policy/routes."""
    metrics = Metrics("frontend", "default")
    eps = [EndpointState(EndpointAddr("127.0.0.1", 40000 + i), {"version": f"v{i + 1}"})
           for i in range(endpoints)]  # fmt: skip
    svc = OutboundService(
        "catalog", "default", "spiffe://gossamer.local/ns/default/sa/catalog", "grpc", eps,
        metrics.route("outbound", "frontend", "catalog", "x"),
        ServicePolicy.from_snapshot(policy, "policy"),
    )  # fmt: skip
    if routes is not None:
        svc.router = HttpRouter.from_snapshot(routes, "routes", default_service="catalog.default")
    return svc


class Table:
    def __init__(self, *services: OutboundService) -> None:
        self.services = {svc.key: svc for svc in services}


class Proxy:
    def __init__(self, table: Table) -> None:
        self.metrics = Metrics("frontend", "default")
        self.table = table


class Runtime:
    def __init__(self) -> None:
        self.accounts: dict[str, StreamAccount] = {}

    def account(self, key: str) -> StreamAccount:
        return self.accounts.setdefault(key, StreamAccount())


class Try:
    """One upstream try: the proxy's client connection and the server answering it."""

    def __init__(self, stream: ProxiedStream, avoid: Any) -> None:
        self.up = H2Upstream(H2Pool(), ("127.0.0.1", 1))
        self.server = H2Session(client=False)
        self.stream = stream
        self.avoid = avoid
        self.events: list[Event] = []
        settle(self.up.session, self.server)

    def pump(self) -> list[Event]:
        """Exchange bytes both ways until quiet, the proxy side reacting as on a socket;
        return the server's new events (also kept in ``events``)."""
        got: list[Event] = []
        for _ in range(20):
            out = self.up.session.data_to_send()
            self.up.handle_events(self.up.session.take_events())
            if out:
                got += self.server.receive(out)
            back = self.server.data_to_send()
            self.server.take_events()
            if back:
                self.up.handle_events(self.up.session.receive(back))
            if not out and not back:
                break
        self.events += got
        return got

    @property
    def sid(self) -> int:
        return next(e[1] for e in self.events if e[0] == HEADERS)

    def body(self) -> bytes:
        return b"".join(e[2] for e in self.events if e[0] == DATA)

    def ended(self) -> bool:
        return any(e[0] == END for e in self.events) or any(
            e[0] == HEADERS and e[3] for e in self.events
        )

    def answer(self, headers: list[Header], data: bytes | None = None,
               trailers: list[Header] | None = None) -> None:  # fmt: skip
        """Respond: head only (trailers-only when no data and no trailers), or with a body."""
        if data is None and trailers is None:
            self.server.submit_response(self.sid, headers, end_stream=True)
        else:
            self.server.submit_response(self.sid, headers, end_stream=False)
            if data:
                self.server.send_data(self.sid, data)
            self.server.end_stream(self.sid, trailers)
        self.pump()


class Outbound:
    """The downstream side as a plan sees it; every send opens a new ``Try``."""

    direction = "outbound"

    def __init__(self, *services: OutboundService) -> None:
        self.app, self.session = pair()
        settle(self.app, self.session)
        self.proxy = Proxy(Table(*services))
        self.grpc_stats = GrpcMetrics()
        self.runtime = Runtime()
        self.tries: list[Try] = []
        self.credited = 0
        real = self.session.consume

        def consume(sid: int, n: int) -> None:
            self.credited += n
            real(sid, n)

        self.session.consume = consume  # type: ignore[method-assign]

    # The real stages after the logical one: the plan, the clock, the stream slots.
    forward = H2Outbound.forward
    fire_mirror = H2Outbound.fire_mirror

    def schedule_flush(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def send_to(self, stream: ProxiedStream, svc: OutboundService,
                subset: tuple[tuple[str, str], ...] = (), avoid: Any = None) -> None:  # fmt: skip
        stream.service = svc
        stream.stats = svc.stats
        endpoint = svc.pick(subset)
        if avoid is not None and endpoint is avoid:
            endpoint = next(ep for ep in svc.endpoints_all if ep is not avoid)
        assert endpoint is not None
        endpoint.pending += 1
        stream.endpoint = endpoint
        attempt = Try(stream, avoid)
        self.tries.append(attempt)
        stream.attach(attempt.up)
        attempt.pump()

    def reroute(self, stream: ProxiedStream, avoid: Any = None) -> None:
        assert stream.service is not None
        self.send_to(stream, stream.service, stream.subset, avoid)

    def call(self, svc: OutboundService, headers: list[Header] = GRPC_CALL, body: bytes = b"",
             *, end: bool = True) -> ProxiedStream:  # fmt: skip
        """The app opens a stream with ``body``; the downstream routes it through the plan."""
        sid, _ = self.app.submit_request(headers, end_stream=not body and end)
        if body:
            self.app.send_data(sid, body)
            if end:
                self.app.end_stream(sid)
        _, got = settle(self.app, self.session)
        head = next(e for e in got if e[0] == HEADERS)
        scan = scan_request(head[2], frozenset())
        stream = ProxiedStream(
            self, sid, scan.kept, authority=scan.authority, request_id=b"r1",  # type: ignore[arg-type]
            grpc=scan.grpc, is_head=False, ended=head[3],
        )  # fmt: skip
        stream.method, stream.path, stream.scheme = scan.method, scan.path, scan.scheme
        route(stream, self.proxy.table, svc)  # type: ignore[arg-type]
        for event in got:
            if event[0] == DATA:
                stream.request_data(event[2])
            elif event[0] == END:
                stream.request_end()
        for attempt in self.tries:
            attempt.pump()
        return stream

    def responses(self) -> list[Event]:
        """What the app received so far (headers, data, closes)."""
        events, _ = settle(self.app, self.session)
        return events


async def settle_loop(seconds: float = 0.02) -> None:
    """Let timers due within ``seconds`` run (backoffs of a few ms, short deadlines)."""
    await asyncio.sleep(seconds)
