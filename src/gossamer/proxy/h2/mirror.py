"""Mirrored copies of HTTP/2 requests: fire and forget, the response read and thrown away.

``start_mirror`` sends a copy of a whole (small) request to a route's mirror backend on the
same multiplexed connections as any other stream. The copy is a ``MirrorStream``: a
``ProxiedStream`` without a client side, so nothing it receives reaches the caller, its
response DATA is credited to the upstream as it arrives, and its failures only count in the
error metrics (direction ``mirror``). Its status is recorded in the mirror backend's route
stats, as for HTTP/1.1 mirrors. A copy not done after the route's timeout (or
``MIRROR_TIMEOUT``) is reset, so a slow mirror cannot hold resources for long.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from gossamer.proxy.h2.stream import CANCEL, ProxiedStream
from gossamer.proxy.pipeline.outbound import MAX_MIRROR_BODY

if TYPE_CHECKING:
    from gossamer.protocol.h2.session import Header
    from gossamer.proxy.h2.downstream import H2Outbound
    from gossamer.proxy.h2.limits import StreamAccount
    from gossamer.proxy.h2.upstream import H2Upstream
    from gossamer.proxy.snapshot.http_rules import HttpRule, MirrorPolicy

__all__ = ["MIRROR_TIMEOUT", "MirrorStream", "fire_mirror", "start_mirror"]

MIRROR_TIMEOUT = 10.0


class MirrorStream(ProxiedStream):
    """A copy of a request with no client to answer."""

    __slots__ = ("expiry", "slot")

    def __init__(self, origin: ProxiedStream, body: bytes, slot: StreamAccount | None) -> None:
        super().__init__(
            origin.down,
            0,
            list(origin.headers),
            authority=origin.authority,
            request_id=origin.request_id,
            grpc=origin.grpc,
            is_head=origin.is_head,
            ended=True,
        )
        self.down_open = False
        self.req_buf = [body] if body else None
        self.req_trailers = origin.req_trailers
        self.slot = slot
        self.expiry: asyncio.TimerHandle | None = None

    def wanted(self) -> bool:
        return not self.done

    def attach(self, up: H2Upstream) -> None:
        if self.done:
            self.release()
            return
        self.open_upstream(up)

    def respond_error(
        self, status: int, cause: str, detail: str = "", extra: tuple[Header, ...] = ()
    ) -> None:
        if self.done:
            return
        self.down.proxy.metrics.error("mirror", cause)
        self.status = status
        self.resp_started = self.resp_ended = True
        if self.up_open and self.up is not None:
            self.up.session.reset(self.up_id, CANCEL)
            self.up.schedule_flush()
        self.finish()

    def credit_down(self, n: int) -> None:
        pass  # the body is a copy: the caller's stream credits the original bytes

    def finish(self) -> None:
        if self.done:
            return
        super().finish()
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        slot = self.slot
        if slot is not None:
            self.slot = None
            slot.leave(self, False)

    def _expired(self) -> None:
        self.expiry = None
        self.respond_error(504, "upstream-timeout", "mirror took too long")


def start_mirror(
    origin: ProxiedStream, policy: MirrorPolicy, body: bytes, rule: HttpRule | None
) -> None:
    """Send a copy of ``origin`` (whose body is ``body``) to the mirror backend."""
    down = cast("H2Outbound", origin.down)  # mirrors only come from the outbound route stage
    metrics = down.proxy.metrics
    table = down.proxy.table
    target = table.services.get(policy.service_key) if table is not None else None
    if target is None:
        metrics.error("mirror", "mirror-unknown-service")
        return
    limits = target.policy.limits
    slot = None
    if limits.max_connections:
        slot = down.runtime.account(target.key)
        if not slot.take(limits):
            metrics.error("mirror", "overflow")
            return
    copy = MirrorStream(origin, body, slot)
    timeout = rule.timeout if rule is not None and rule.timeout is not None else MIRROR_TIMEOUT
    copy.expiry = asyncio.get_running_loop().call_later(timeout, copy._expired)
    down.send_to(copy, target, policy.backend.subset_key)


def fire_mirror(stream: ProxiedStream) -> None:
    """The whole request arrived: send the copy its plan holds, if it still may go (the
    body fits and the response has not started)."""
    plan = stream.plan
    if plan is None:
        return
    mirror = plan.mirror
    plan.mirror = None
    if mirror is None:
        return
    metrics = stream.down.proxy.metrics
    if plan.keep is None or plan.kept > MAX_MIRROR_BODY:
        metrics.error("mirror", "mirror-skipped-body")
        return
    if stream.resp_started:
        metrics.error("mirror", "mirror-skipped-streaming")
        return
    start_mirror(stream, mirror, b"".join(plan.keep), stream.rule)
    if stream.resp_started or stream.retry is None:
        plan.keep = None
