"""The snapshot's ``tracing`` (the MeshConfig's ``spec.tracing``), checked and compiled.

``compile_tracing`` turns it into a ``TracingConfig`` (None when tracing is off); the sidecar's
state (``proxy/state.py``) keeps one span exporter per distinct export setting and puts a
``TraceStage`` (``pipeline/tracing.py``) in the ``trace`` slot of both directions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gossamer.proxy.observe.otlp import parse_endpoint
from gossamer.proxy.snapshot.errors import SnapshotError

__all__ = ["TracingConfig", "compile_tracing"]


@dataclass(frozen=True, slots=True)
class TracingConfig:
    endpoint: str
    headers: tuple[tuple[bytes, bytes], ...]
    ratio: float
    max_queue: int
    batch: int
    interval: float

    @property
    def export(self) -> tuple[str, tuple[tuple[bytes, bytes], ...], int, int, float]:
        """What the exporter is made of (a change of ratio alone keeps the exporter)."""
        return (self.endpoint, self.headers, self.max_queue, self.batch, self.interval)


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]{1,256}")


def _headers(raw: Any) -> tuple[tuple[bytes, bytes], ...]:
    """``snapshot.tracing.headers``: ``[name, value]`` pairs, checked so that nothing but
    one header line each can reach the export request."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > 32:
        raise SnapshotError("snapshot.tracing.headers: expected a list of at most 32 pairs")
    out = []
    for i, pair in enumerate(raw):
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(part, str) for part in pair)):  # fmt: skip
            raise SnapshotError(f"snapshot.tracing.headers[{i}]: expected [name, value]")
        name, value = pair
        if not _TOKEN.fullmatch(name):
            raise SnapshotError(f"snapshot.tracing.headers[{i}]: {name!r} is not a header "
                                "name in lower case")  # fmt: skip
        if not value.isprintable() or not value.isascii() or len(value) > 8192:
            raise SnapshotError(f"snapshot.tracing.headers[{i}]: the value must be at most "
                                "8192 printable ASCII characters")  # fmt: skip
        out.append((name.encode(), value.encode()))
    return tuple(out)


def _number(raw: Mapping[str, Any], field: str, whole: bool, low: float, high: float) -> Any:
    value = raw.get(field)
    kind = int if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        what = "an integer" if whole else "a number"
        raise SnapshotError(f"snapshot.tracing.{field}: expected {what} in {low:g}..{high:g}, "
                            f"got {value!r}")  # fmt: skip
    return value


def compile_tracing(raw: Any) -> TracingConfig | None:
    """``snapshot.tracing`` → ``TracingConfig``; ``SnapshotError`` naming a bad field."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SnapshotError("snapshot.tracing: expected an object or null")
    endpoint = raw.get("endpoint")
    if not isinstance(endpoint, str):
        raise SnapshotError(f"snapshot.tracing.endpoint: expected a string, got {endpoint!r}")
    try:
        parse_endpoint(endpoint)
    except ValueError as exc:
        raise SnapshotError(f"snapshot.tracing.endpoint: {exc}") from exc
    return TracingConfig(
        endpoint,
        _headers(raw.get("headers")),
        float(_number(raw, "ratio", False, 0.0, 1.0)),
        _number(raw, "max_queue", True, 1, 1_000_000),
        _number(raw, "batch", True, 1, 10_000),
        float(_number(raw, "interval", False, 0.01, 60.0)),
    )
