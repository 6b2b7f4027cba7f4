"""What an HTTP/1.1 upstream connection streams a response into.

``ResponseSink`` is the interface ``UpstreamConnection`` calls while it relays one exchange:
the downstream connection the request came on (``DownstreamConnection``) is one; a mirrored
copy, whose response nobody reads (``http1.mirror.MirrorSink``), is another. Each implements
every method (what both do when a response starts is ``response_started``). It is a base
class rather than a mypyc trait because the upstream calls it several times per response: a
class's methods are called through its vtable, a trait's after a search for the trait's
table.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gossamer.proxy.http1.exchange import Exchange
    from gossamer.proxy.http1.upstream import UpstreamConnection

__all__ = ["ResponseSink", "response_started"]


def response_started(ex: Exchange) -> None:
    """The response to ``ex`` began: mark it, and give its endpoint the time to first byte
    (the balancer's latency estimate)."""
    ex.response_started = True
    endpoint = ex.endpoint
    if endpoint is not None:
        now = time.monotonic_ns()
        endpoint.observe(now - ex.sent_ns, now)


class ResponseSink(asyncio.Protocol):
    def write(self, data: bytes) -> None:
        """Response bytes for the caller."""
        raise TypeError("sink responsibility")

    def hold(self) -> None:
        """Gather writes until ``flush`` (one syscall for a whole parsed chunk)."""
        raise TypeError("sink responsibility")

    def flush(self) -> None:
        raise TypeError("sink responsibility")

    def on_response_status(self, ex: Exchange, status: int) -> bool:
        """The final status is known (nothing forwarded yet): True drops the response for a
        retry."""
        raise TypeError("sink responsibility")

    def retry_dropped(self, ex: Exchange) -> None:
        """The response to ``ex`` was dropped for a retry."""
        raise TypeError("sink responsibility")

    def not_processed(self, ex: Exchange, cause: str) -> bool:
        """The upstream sidecar answered that no app saw ``ex`` (``retries.UNPROCESSED``):
        True drops that answer and takes the request to another endpoint."""
        raise TypeError("sink responsibility")

    def response_head(self, ex: Exchange, head: bytes) -> None:
        raise TypeError("sink responsibility")

    def response_complete(self, ex: Exchange) -> None:
        raise TypeError("sink responsibility")

    def upstream_failed(self, ex: Exchange, cause: str, detail: str, *, reused: bool) -> None:
        """The upstream went away before answering."""
        raise TypeError("sink responsibility")

    def abort_response(self, ex: Exchange, cause: str) -> None:
        """The upstream failed mid-response."""
        raise TypeError("sink responsibility")

    def start_tunnel(self, ex: Exchange, upstream: UpstreamConnection) -> None:
        """The upstream accepted an upgrade (101)."""
        raise TypeError("sink responsibility")

    def pause_for_upstream(self) -> None:
        raise TypeError("sink responsibility")

    def resume_for_upstream(self) -> None:
        raise TypeError("sink responsibility")
