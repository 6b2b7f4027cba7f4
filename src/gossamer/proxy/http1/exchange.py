"""One request/response exchange as it crosses the proxy: the only per-request object.

The downstream connection fills it while parsing; the upstream connection streams the response
against it. It carries what later stages need (route stats, chosen endpoint, timing) and
nothing else.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from gossamer.protocol.plain import header_pairs

if TYPE_CHECKING:
    from gossamer.proxy.http1.upstream import UpstreamConnection
    from gossamer.proxy.observe.metrics import RouteStats
    from gossamer.proxy.pipeline.balancer import EndpointState
    from gossamer.proxy.resilience.retry import RetryPolicy
    from gossamer.proxy.snapshot.table import OutboundService

__all__ = ["Exchange"]


class Exchange:
    __slots__ = (
        "body",
        "body_done",
        "body_size",
        "chunked",
        "endpoint",
        "has_body",
        "head",
        "headers",
        "http10",
        "is_head",
        "keep_alive",
        "logical",
        "method",
        "path",
        "plain",
        "replay",
        "replay_size",
        "request_id",
        "response_started",
        "retry",
        "rule",
        "sent_ns",
        "service",
        "start_ns",
        "stats",
        "status",
        "subset",
        "target",
        "te",
        "timer",
        "tries",
        "try_timer",
        "upgrade",
        "upstream",
    )

    def __init__(self, start_ns: int) -> None:
        self.start_ns = start_ns
        self.sent_ns = 0
        self.target = b""  # request target as received; outbound: the authority, once parsed
        self.path = b""  # origin-form path and query sent upstream
        self.te = b""  # Transfer-Encoding value when the body is chunked
        self.headers: list[tuple[bytes, bytes]] = []
        # A plain request's header lines as forwarded (``gossamer.protocol.plain``), each
        # starting with CRLF; ``headers`` stays empty until ``header_list`` is called.
        self.plain = b""
        self.method = b""
        self.http10 = False
        self.keep_alive = True
        self.is_head = False
        self.chunked = False  # request body goes upstream chunked
        self.has_body = False
        self.head = b""  # request head as sent upstream
        self.body: list[bytes] | None = None  # body chunks buffered until an upstream is ready
        self.body_size = 0
        self.body_done = False
        self.request_id = b""
        self.upstream: UpstreamConnection | None = None
        self.endpoint: EndpointState | None = None
        self.stats: RouteStats | None = None
        self.response_started = False
        self.status = 0
        self.upgrade = b""  # the Upgrade header value of an upgrade request (e.g. b"websocket")
        # Outbound routing and resilience (None/empty when no route or policy applies).
        self.logical: OutboundService | None = None  # the service the caller named
        self.service: OutboundService | None = None  # the backend chosen by the route
        self.subset: tuple[tuple[str, str], ...] = ()
        self.rule: Any = None  # the HttpRule that matched
        self.retry: RetryPolicy | None = None
        self.tries = 0  # how many times the request has been sent
        self.replay: list[bytes] | None = None  # body copies kept for a retry
        self.replay_size = 0
        self.timer: asyncio.TimerHandle | None = None  # the whole request's deadline
        self.try_timer: asyncio.TimerHandle | None = None  # this try's deadline

    def header_list(self) -> list[tuple[bytes, bytes]]:
        """The forwardable request headers (made from the plain lines on first use; from then
        on the head is rendered from this list)."""
        plain = self.plain
        if plain:
            self.headers = header_pairs(plain)
            self.plain = b""
        return self.headers

    def cancel_timers(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
