"""Live tap at the control plane: ``GET /v1/tap/{namespace}/{service}`` (docs/internals.md §17).

A tap is asked of the config API with the admin token, so only the mesh's operators see live
requests. ``TapHub`` gives the session an id, sends ``tap-start`` (the id, ``max_rps``, an
optional method and path prefix, ``seconds``) to every connected sidecar of the service, and
queues the ``tap-event`` batches they send back (at most ``QUEUE`` events waiting; beyond,
counted as dropped). ``tap_stream`` answers the API request with NDJSON: a ``started`` line
naming the sidecars tapped, one ``request`` line per event (each naming its sidecar), a
``joined`` line for a sidecar of the service that connected mid-way (tapped from then on, for
the time left), and an ``end`` line with what was dropped; when it ends (its time is up, the
caller went away, the control plane stops) the sidecars get ``tap-stop``. A sidecar stops on
its own after ``seconds`` too, should the stop never come.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response, StreamingResponse

if TYPE_CHECKING:
    from starlette.requests import Request

    from gossamer.control.plane import ControlPlane
    from gossamer.control.registry import ProxyRecord

__all__ = ["TapHub", "TapSession", "tap_stream"]

QUEUE = 10_000
MAX_SECONDS = 600
MAX_RPS = 100


@dataclass
class TapSession:
    id: str
    workload: tuple[str, str]  # (namespace, service) tapped
    settings: dict[str, Any]  # what tap-start says (its seconds: the time left, when sent)
    deadline: float  # the event loop's time when the session ends
    proxies: list[str]  # the sidecars tapped so far (those that came mid-way too)
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(QUEUE))
    dropped: int = 0


class TapHub:
    """The tap sessions of this control plane. A sidecar of the tapped service that connects
    while a session lasts (a new replica, a restarted one) is tapped too, for the time left:
    ``joined`` (called on every hello) sends it ``tap-start`` and tells the stream."""

    def __init__(self) -> None:
        self.sessions: dict[str, TapSession] = {}

    def start(
        self,
        workload: tuple[str, str],
        records: list[ProxyRecord],
        settings: dict[str, Any],
        deadline: float,
    ) -> TapSession:
        session = TapSession(secrets.token_hex(8), workload, settings, deadline,
                             [r.proxy_id for r in records])  # fmt: skip
        self.sessions[session.id] = session
        for record in records:
            self._send_start(session, record)
        return session

    def joined(self, record: ProxyRecord) -> None:
        """``record`` has just connected: tap it in each session of its workload."""
        now = asyncio.get_running_loop().time()
        for session in self.sessions.values():
            if session.workload != record.workload.key or session.deadline <= now:
                continue
            if record.proxy_id not in session.proxies:
                session.proxies.append(record.proxy_id)
            self._send_start(session, record)  # (again, after a reconnection: it may be new)
            try:
                session.queue.put_nowait({"type": "joined", "proxy_id": record.proxy_id})
            except asyncio.QueueFull:
                session.dropped += 1

    @staticmethod
    def _send_start(session: TapSession, record: ProxyRecord) -> None:
        if record.session is None:
            return
        left = max(1, math.ceil(session.deadline - asyncio.get_running_loop().time()))
        record.session.send({"type": "tap-start", "id": session.id, **session.settings,
                             "seconds": left})  # fmt: skip

    def stop(self, session: TapSession, records: Iterable[ProxyRecord]) -> None:
        """End ``session``: ``tap-stop`` to each of its sidecars still connected."""
        self.sessions.pop(session.id, None)
        for record in records:
            if record.proxy_id in session.proxies and record.session is not None:
                record.session.send({"type": "tap-stop", "id": session.id})

    def events(self, record: ProxyRecord, message: dict[str, Any]) -> None:
        """A sidecar's ``tap-event`` batch (ignored when its session is over)."""
        session = self.sessions.get(str(message.get("id")))
        events = message.get("events")
        if session is None or record.proxy_id not in session.proxies or not isinstance(
            events, list
        ):
            return
        for event in events:
            if not isinstance(event, dict):
                continue
            try:
                session.queue.put_nowait({"type": "request", "proxy_id": record.proxy_id,
                                          **event})  # fmt: skip
            except asyncio.QueueFull:
                session.dropped += 1


class _BadQuery(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def _number(request: Request, name: str, default: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        raise _BadQuery(name, f"{name}: expected an integer in 1..{high}, got {raw!r}")
    return int(raw)


def _settings(request: Request) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "max_rps": _number(request, "max_rps", 10, MAX_RPS),
        "seconds": _number(request, "seconds", 30, MAX_SECONDS),
    }
    method, path = request.query_params.get("method"), request.query_params.get("path")
    if method:
        settings["method"] = method.upper()
    if path:
        if not path.startswith("/"):
            raise _BadQuery("path", f"path: expected a prefix starting with /, got {path!r}")
        settings["path"] = path
    return settings


async def tap_stream(plane: ControlPlane, request: Request) -> Response:
    namespace = request.path_params["namespace"]
    service = request.path_params["service"]
    try:
        settings = _settings(request)
    except _BadQuery as exc:
        return JSONResponse({"error": "invalid", "message": str(exc),
                             "errors": [{"path": f"query.{exc.name}", "message": str(exc)}]},
                            status_code=422)  # fmt: skip
    records = [r for r in plane.registry
               if r.workload.key == (namespace, service) and r.session is not None]  # fmt: skip
    if not records:
        return JSONResponse({"error": "not-found",
                             "message": f"no connected sidecar of {namespace}/{service}"},
                            status_code=404)  # fmt: skip
    deadline = asyncio.get_running_loop().time() + settings["seconds"]
    session = plane.tap.start((namespace, service), records, settings, deadline)

    async def lines() -> AsyncIterator[bytes]:
        try:
            started = {"type": "started", "proxies": session.proxies, **settings}
            yield json.dumps(started).encode() + b"\n"
            loop = asyncio.get_running_loop()
            while not plane.stopping.is_set() and (left := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    event = await asyncio.wait_for(session.queue.get(), min(left, 1.0))
                    yield json.dumps(event).encode() + b"\n"
            yield json.dumps({"type": "end", "dropped": session.dropped}).encode() + b"\n"
        finally:
            plane.tap.stop(session, plane.registry)

    return StreamingResponse(lines(), media_type="application/x-ndjson")
