"""One request/response exchange as it crosses the proxy: the only per-request object.

The downstream connection fills it while parsing; the upstream connection streams the response
against it. It carries what later stages need (route stats, chosen endpoint, timing) and
nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gossamer.proxy.balance import EndpointState
    from gossamer.proxy.metrics import RouteStats
    from gossamer.proxy.upstream import UpstreamConnection

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
        "method",
        "path",
        "request_id",
        "response_started",
        "sent_ns",
        "start_ns",
        "stats",
        "status",
        "target",
        "te",
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
