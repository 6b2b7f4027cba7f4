"""One HTTP/1.1 request/response exchange as it crosses the proxy: the only per-request object
of the HTTP/1.1 path.

An ``Exchange`` is the pipeline's ``Call`` for HTTP/1.1: the downstream connection fills it
while parsing, the pipeline's stages decide on it, and the upstream connection streams the
response against it. Besides the neutral fields it carries HTTP/1.1 framing (chunked, keep-alive,
upgrade), the body buffered until an upstream is attached, the copy kept for a retry, and the
request's timers; the Call methods it implements go to its downstream connection (``down``).
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

from gossamer.protocol.http1 import redirect_response
from gossamer.protocol.plain import header_pairs
from gossamer.proxy.pipeline.call import HTTP1, Call, Header

if TYPE_CHECKING:
    from gossamer.proxy.http1.downstream import DownstreamConnection
    from gossamer.proxy.http1.upstream import UpstreamConnection
    from gossamer.proxy.snapshot.http_rules import MirrorPolicy

__all__ = ["Exchange"]


# A pattern per tuple of names ``header_values`` is asked for: the lines of those headers.
_LINES: dict[tuple[bytes, ...], re.Pattern[bytes]] = {}


def _lines_pattern(names: tuple[bytes, ...]) -> re.Pattern[bytes]:
    alternatives = b"|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    return re.compile(rb"\n(" + alternatives + rb"):[ \t]*([^\r\n]*)", re.IGNORECASE)


class Exchange(Call):
    __slots__ = (
        "body",
        "body_done",
        "body_size",
        "chunked",
        "down",
        "has_body",
        "head",
        "headers",
        "http10",
        "is_head",
        "keep_alive",
        "keep_limit",
        "plain",
        "replay",
        "replay_size",
        "response_started",
        "scanned_b3",
        "scanned_plain",
        "scanned_traceparent",
        "scanned_user_agent",
        "sent_ns",
        "target",
        "te",
        "timer",
        "try_timer",
        "unprocessed",
        "upgrade",
        "upstream",
    )

    def __init__(self, start_ns: int, down: DownstreamConnection) -> None:
        super().__init__(start_ns)
        self.down = down  # the connection the request came on (it answers it)
        self.sent_ns = 0
        self.target = b""  # request target as received
        self.te = b""  # Transfer-Encoding value when the body is chunked
        self.headers: list[Header] = []
        # A plain request's header lines as forwarded (``gossamer.protocol.plain``), each
        # starting with CRLF; ``headers`` stays empty until ``header_list`` is called.
        self.plain = b""
        # What the scan of a plain request found for tracing (``trace_first_look``), true
        # while ``plain`` is still the very lines scanned (any edit makes a new object).
        self.scanned_plain = b""
        self.scanned_traceparent: bytes | None = None
        self.scanned_b3 = False
        # The first User-Agent the scan found: the value the request arrived with (edits of
        # ``plain`` do not change it; an edit of User-Agent itself is a route's or filter's).
        self.scanned_user_agent: bytes | None = None
        self.http10 = False
        self.keep_alive = True
        self.is_head = False
        self.chunked = False  # request body goes upstream chunked
        self.has_body = False
        self.head = b""  # request head as sent upstream
        self.body: list[bytes] | None = None  # body chunks buffered until an upstream is ready
        self.body_size = 0
        self.body_done = False
        self.upstream: UpstreamConnection | None = None
        self.response_started = False
        self.upgrade = b""  # the Upgrade header value of an upgrade request (e.g. b"websocket")
        self.replay: list[bytes] | None = None  # body copies kept for a retry
        # The upstream sidecar answered that no app saw the request: take it elsewhere now.
        self.unprocessed = False
        self.replay_size = 0
        self.keep_limit = 0  # the largest body ``replay`` may hold
        self.timer: asyncio.TimerHandle | None = None  # the whole request's deadline
        self.try_timer: asyncio.TimerHandle | None = None  # this try's deadline

    @property
    def protocol(self) -> str:
        return HTTP1

    def header_list(self) -> list[Header]:
        """The forwardable request headers (made from the plain lines on first use; from then
        on the head is rendered from this list)."""
        plain = self.plain
        if plain:
            self.headers = header_pairs(plain)
            self.plain = b""
        return self.headers

    def set_header_list(self, headers: list[Header]) -> None:
        self.headers = headers
        self.plain = b""

    def header_values(self, names: tuple[bytes, ...]) -> list[bytes | None]:
        """Read from the plain lines while they are unparsed: one search, not a parse."""
        plain = self.plain
        if not plain:
            return super().header_values(names)
        pattern = _LINES.get(names)
        if pattern is None:
            pattern = _LINES[names] = _lines_pattern(names)
        found: list[bytes | None] = [None] * len(names)
        for name, value in pattern.findall(plain):
            at = names.index(name.lower())
            if found[at] is None:
                found[at] = value.rstrip()
        return found

    def trace_first_look(self) -> tuple[bytes | None, bool]:
        plain = self.plain
        if plain and plain is self.scanned_plain:
            return self.scanned_traceparent, self.scanned_b3
        return super().trace_first_look()

    def user_agent(self) -> bytes | None:
        if self.scanned_plain:
            return self.scanned_user_agent
        return super().user_agent()

    def add_header(self, name: bytes, value: bytes) -> None:
        plain = self.plain
        if plain:
            self.plain = b"".join((plain, b"\r\n", name, b": ", value))
        else:
            self.headers.append((name, value))

    def set_path(self, path: bytes) -> None:
        self.path = path

    def wanted(self) -> bool:
        return self.down.wants(self)

    def fail(
        self, status: int, cause: str, detail: str = "", extra: tuple[Header, ...] = ()
    ) -> None:
        self.down.respond_error(self, status, cause, detail, extra)

    def redirect(self, status: int, location: bytes) -> None:
        self.down.respond_whole(self, status, redirect_response(status, location, self.request_id))

    def may_repeat(self) -> bool:
        return not self.upgrade  # an upgrade turns the connection into a tunnel

    def keep_body(self, limit: int) -> None:
        self.keep_limit = limit
        if self.body_size <= limit:
            self.replay = list(self.body) if self.body else []
            self.replay_size = self.body_size

    def replayable(self, limit: int) -> bool:
        if self.response_started:
            return False
        if not self.has_body:
            return True
        return self.replay is not None and self.body_done and self.replay_size <= limit

    def mirror(self, policy: MirrorPolicy) -> None:
        self.down.mirror(self, policy)

    def forward(self, timeout: float | None) -> None:
        self.down.forward(self, timeout)

    def cancel_timers(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
