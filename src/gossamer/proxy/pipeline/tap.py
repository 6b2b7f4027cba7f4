"""Live tap, in the ``observe`` slot of both directions while someone taps this workload.

``gossamer tap`` asks the control plane, which asks the workload's sidecars (``tap-start``:
an id, at most ``max_rps`` requests a second, an optional method and path prefix, and how
long; docs/internals.md §17). Each sidecar puts a ``TapStage`` in both directions for that
long (or until ``tap-stop``), and nothing when no one taps: the stage exists only then. On
each completed request that matches, if the session's token bucket has a token, it hands a
small event (time, direction, protocol, method, authority, path, status, error, duration,
the peer's SPIFFE ID, the request id) to ``emit``; the sidecar sends the events in batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gossamer.proxy.observe.timestamps import duration_ms
from gossamer.proxy.pipeline.slots import Stage

if TYPE_CHECKING:
    from gossamer.proxy.pipeline.call import Call

__all__ = ["MAX_RPS", "TapSpec", "TapStage"]

MAX_RPS = 100.0


class TapSpec:
    """One tap session as this sidecar keeps it: what matches, how many a second, until when
    (monotonic seconds)."""

    __slots__ = ("id", "method", "path", "rate", "tokens", "until", "updated")

    def __init__(self, message: dict[str, Any]) -> None:
        self.id = str(message["id"])
        rate = message.get("max_rps", 10)
        self.rate = min(float(rate), MAX_RPS) if isinstance(rate, int | float) and rate > 0 else 1.0
        method, path = message.get("method"), message.get("path")
        self.method = method.encode("latin-1") if isinstance(method, str) and method else b""
        self.path = path.encode("latin-1") if isinstance(path, str) and path else b""
        seconds = message.get("seconds", 30)
        seconds = float(seconds) if isinstance(seconds, int | float) and seconds > 0 else 30.0
        self.until = time.monotonic() + min(seconds, 3600.0)
        self.tokens = self.rate
        self.updated = time.monotonic()

    def take(self, now: float) -> bool:
        """A token of the bucket (``rate`` a second, as many at once)."""
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class TapStage(Stage):
    """Emits the matching requests of one tap session (see the module docstring)."""

    slot = "observe"
    name = "tap"
    sees_completions = True

    def __init__(
        self, spec: TapSpec, direction: str, emit: Callable[[str, dict[str, Any]], None]
    ) -> None:
        self.spec = spec
        self.direction = direction
        self.emit = emit

    def on_complete(self, call: Call) -> None:
        spec = self.spec
        now = time.monotonic()
        if now > spec.until:
            return
        if spec.method and call.method != spec.method:
            return
        if spec.path and not call.path.startswith(spec.path):
            return
        if not spec.take(now):
            return
        elapsed = time.monotonic_ns() - call.start_ns
        target = call.service
        peer = call.peer.decode("latin-1") if self.direction == "inbound" else (
            target.identity if target is not None else "")  # fmt: skip
        self.emit(spec.id, {
            "time": time.time() - elapsed / 1e9, "direction": self.direction,
            "protocol": call.protocol, "method": call.method.decode("latin-1"),
            "authority": call.authority.decode("latin-1"),
            "path": call.path.decode("latin-1"), "status": call.status,
            "error": call.error or None, "duration_ms": duration_ms(elapsed),
            "peer": peer or None, "request_id": call.request_id.decode("latin-1") or None,
        })  # fmt: skip
