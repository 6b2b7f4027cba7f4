"""One request as every pipeline stage sees it, whatever protocol carried it.

``Call`` is the protocol-neutral representation the stages work on (docs/architecture.md):
the request's method, authority, path, headers, the caller's identity, the protocol, and the
state the stages decide (the service named, the backend, the label subset, the matched rule,
the retry policy, the tries made). The codecs' per-request objects are Calls:
``proxy.http1.exchange.Exchange`` (one HTTP/1.1 request/response) and
``proxy.h2.stream.ProxiedStream`` (one HTTP/2 stream, gRPC included). Each codec says how its
protocol does the few things a stage asks of a request (the methods below): give its header
list, take an edited one, answer with a proxy error or a redirect, keep its body for a
replay, and go on to the concrete and endpoint stages. Framing, flow control and I/O stay in
the codec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gossamer.proxy.observe.metrics import RouteStats
    from gossamer.proxy.pipeline.balancer import EndpointState
    from gossamer.proxy.pipeline.slots import Stages
    from gossamer.proxy.resilience.retry import RetryPolicy
    from gossamer.proxy.snapshot.http_rules import MirrorPolicy
    from gossamer.proxy.snapshot.table import OutboundService

__all__ = ["HTTP1", "HTTP2", "TRACE_FIRST_LOOK", "Call", "Header", "authority_port"]

Header = tuple[bytes, bytes]
HTTP1 = "HTTP/1.1"
HTTP2 = "HTTP/2"
# What tracing looks at first: W3C, and whether a B3 form came (then it reads them all).
TRACE_FIRST_LOOK = (b"traceparent", b"b3", b"x-b3-traceid", b"x-b3-sampled", b"x-b3-flags")
_NO_B3 = [None, None, None, None]
_USER_AGENT = (b"user-agent",)


class Call:
    __slots__ = (
        "authority",
        "endpoint",
        "error",
        "grpc",
        "logical",
        "method",
        "notes",
        "path",
        "peer",
        "request_bytes",
        "request_id",
        "response_bytes",
        "retry",
        "rule",
        "scheme",
        "service",
        "stages",
        "start_ns",
        "stats",
        "status",
        "subset",
        "trace_id",
        "tries",
    )

    def __init__(self, start_ns: int) -> None:
        self.start_ns = start_ns
        self.method = b""
        self.scheme = b"http"
        self.authority = b""  # the destination as the caller named it (Host / :authority)
        self.path = b""  # origin-form path and query, as sent upstream
        self.request_id = b""
        self.peer = b""  # the caller's SPIFFE ID (inbound over mTLS), else empty
        self.grpc = False
        self.status = 0
        self.error = ""  # the cause of an answer the proxy made or cut (x-gossamer-error)
        self.request_bytes = 0  # body bytes from the caller (as decoded from its framing)
        self.response_bytes = 0  # body bytes of the response (as decoded from its framing)
        self.stats: RouteStats | None = None
        self.endpoint: EndpointState | None = None
        # What the logical stage decided (None / empty while no route or policy applies).
        self.logical: OutboundService | None = None  # the service the caller named
        self.service: OutboundService | None = None  # the backend chosen by the route
        self.subset: tuple[tuple[str, str], ...] = ()
        self.rule: Any = None  # the HttpRule that matched
        self.retry: RetryPolicy | None = None
        self.tries = 0  # upstream tries started (the first one included)
        self.stages: Stages | None = None  # the filters that see the response too
        self.notes: dict[object, object] | None = None  # what stages keep per request
        # The trace id the request went on with (hex), set by the tracing stage whether the
        # trace is sampled or not; empty without one (the logs then read the headers).
        self.trace_id = b""

    @property
    def protocol(self) -> str:
        """``HTTP/1.1`` or ``HTTP/2``."""
        raise TypeError("codec responsibility")

    # === what a stage asks of the codec ===

    def header_list(self) -> list[Header]:
        """The request's header fields as forwarded (names as received; HTTP/2 lists its
        pseudo-header fields too, which no header rule can match)."""
        raise TypeError("codec responsibility")

    def set_header_list(self, headers: list[Header]) -> None:
        """Forward ``headers`` (a list ``header_list`` returned, edited) instead."""
        raise TypeError("codec responsibility")

    def header_values(self, names: tuple[bytes, ...]) -> list[bytes | None]:
        """The first value of each header of ``names`` (lower case), None where the request
        has none. A codec may answer without building the header list."""
        found: list[bytes | None] = [None] * len(names)
        for name, value in self.header_list():
            lower = name.lower()
            for i, wanted in enumerate(names):
                if lower == wanted and found[i] is None:
                    found[i] = value
        return found

    def trace_first_look(self) -> tuple[bytes | None, bool]:
        """The first ``traceparent`` value (None: none) and whether any B3 header of
        ``TRACE_FIRST_LOOK`` came. A codec whose scan of the head found them answers
        without a search."""
        traceparent, *b3 = self.header_values(TRACE_FIRST_LOOK)
        return traceparent, b3 != _NO_B3

    def logged_trace_id(self) -> bytes | None:
        """The trace id access logs and audit records name: the one the request went on with
        (the tracing stage's, sampled or not), else the caller's W3C one."""
        if self.trace_id:
            return self.trace_id
        traceparent, _ = self.trace_first_look()  # (the HTTP/1.1 scan found it: no search)
        if traceparent is not None and len(traceparent) >= 35:
            return traceparent[3:35]
        return None

    def user_agent(self) -> bytes | None:
        """The request's User-Agent (the access log's): as it arrived when the codec's scan
        of the head found it, else the first value of the headers as they are now."""
        return self.header_values(_USER_AGENT)[0]

    def add_header(self, name: bytes, value: bytes) -> None:
        """Forward one more header field (a codec may add it without building the list)."""
        headers = self.header_list()
        headers.append((name, value))
        self.set_header_list(headers)

    def set_path(self, path: bytes) -> None:
        """Forward the request to ``path`` (origin form, query included)."""
        raise TypeError("codec responsibility")

    def wanted(self) -> bool:
        """Whether the caller still waits for an answer that has not started."""
        raise TypeError("codec responsibility")

    def fail(
        self, status: int, cause: str, detail: str = "", extra: tuple[Header, ...] = ()
    ) -> None:
        """Answer with an error the proxy generates (``x-gossamer-error: cause``)."""
        raise TypeError("codec responsibility")

    def redirect(self, status: int, location: bytes) -> None:
        """Answer with a redirect a route is configured to give."""
        raise TypeError("codec responsibility")

    def may_repeat(self) -> bool:
        """Whether the protocol could ever send this request twice (an HTTP/1.1 upgrade,
        which turns the connection into a tunnel, cannot)."""
        return True

    def keep_body(self, limit: int) -> None:
        """Keep a copy of the request body, up to ``limit`` bytes, for a replay or a mirror
        (a larger body is forwarded, not kept)."""
        raise TypeError("codec responsibility")

    def replayable(self, limit: int) -> bool:
        """Whether the request can be sent again now: nothing of the response reached the
        caller, who is still there, and the request arrived whole with a kept copy of at
        most ``limit`` bytes."""
        raise TypeError("codec responsibility")

    def mirror(self, policy: MirrorPolicy) -> None:
        """Send a copy of the whole request to ``policy``'s backend, fire and forget (the
        codec skips one whose body is too large or still streaming, and counts why)."""
        raise TypeError("codec responsibility")

    def forward(self, timeout: float | None) -> None:
        """Go on to the concrete and endpoint stages, under ``timeout`` (whole request,
        retries included) when one applies."""
        raise TypeError("codec responsibility")


def authority_port(authority: bytes, scheme: bytes) -> int:
    """The port the caller asked for: its authority's, else the scheme's default."""
    if authority.startswith(b"["):  # [v6]:port
        rest = authority.partition(b"]")[2]
        port = rest[1:] if rest.startswith(b":") else b""
    else:
        port = authority.partition(b":")[2]
    if port.isdigit() and 0 < len(port) <= 5:
        return int(port)
    return 443 if scheme == b"https" else 80
