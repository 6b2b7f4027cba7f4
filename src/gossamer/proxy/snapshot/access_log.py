"""The snapshot's ``access_log`` (this workload's, resolved by the control plane from the
MeshConfig's ``spec.accessLog`` and its Service's ``accessLog``), checked and compiled.

``compile_access_log`` gives the writer's settings (None: no access log); the sidecar's state
(``proxy/state.py``) keeps one ``AccessLog`` writer (``observe/access_log.py``) per setting and
puts an ``AccessLogStage`` (``pipeline/access_log.py``) in both directions' ``observe`` slot.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gossamer.proxy.snapshot.errors import SnapshotError
from gossamer.snapshot_schema import ACCESS_LOG_FIELDS

__all__ = ["AccessLogConfig", "compile_access_log"]


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    format: str  # json or text
    template: str  # text: {field} placeholders of ACCESS_LOG_FIELDS
    path: str  # a file (appended to), /dev/stdout or /dev/stderr


def _string(raw: Mapping[str, Any], field: str) -> str:
    value = raw.get(field)
    if not isinstance(value, str):
        raise SnapshotError(f"snapshot.access_log.{field}: expected a string, got {value!r}")
    return value


def compile_access_log(raw: Any) -> AccessLogConfig | None:
    """``snapshot.access_log`` → ``AccessLogConfig``; ``SnapshotError`` naming a bad field."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SnapshotError("snapshot.access_log: expected an object or null")
    fmt, template, path = _string(raw, "format"), _string(raw, "template"), _string(raw, "path")
    if fmt not in ("json", "text"):
        raise SnapshotError(f"snapshot.access_log.format: expected json or text, got {fmt!r}")
    if not path.startswith("/"):
        raise SnapshotError(f"snapshot.access_log.path: expected an absolute path, got {path!r}")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise SnapshotError(f"snapshot.access_log.template: {exc}") from None
    unknown = sorted(names - set(ACCESS_LOG_FIELDS))
    if unknown:
        raise SnapshotError(f"snapshot.access_log.template: unknown field {unknown[0]!r}")
    return AccessLogConfig(fmt, template, path)
