"""Readers for fields of the traffic-management snapshot (docs/internals.md §8).

Each reader checks one field of a JSON object and raises ``SnapshotError`` naming the full
field path (``where.field``) when it is missing or of the wrong kind. Durations arrive as
integer milliseconds and leave as float seconds. Shared by ``proxy.routes`` and the
``proxy.resilience`` modules; used only at compile time, never on the request path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gossamer.proxy.snapshot.errors import SnapshotError

__all__ = [
    "number",
    "obj",
    "opt_duration",
    "opt_int",
    "opt_obj",
    "str_list",
    "str_map",
    "string",
]


def obj(value: Any, where: str) -> Mapping[str, Any]:
    """``value`` itself, which must be a JSON object."""
    if not isinstance(value, Mapping):
        raise SnapshotError(f"{where}: expected an object, got {value!r}")
    return value


def opt_obj(d: Mapping[str, Any], field: str, where: str) -> Mapping[str, Any] | None:
    """An optional nested object (absent or null gives None)."""
    value = d.get(field)
    return None if value is None else obj(value, f"{where}.{field}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def opt_int(
    d: Mapping[str, Any],
    field: str,
    where: str,
    *,
    default: int,
    minimum: int = 0,
    maximum: int | None = None,
) -> int:
    """An integer in [minimum, maximum]; absent or null gives ``default``."""
    value = d.get(field)
    if value is None:
        return default
    if not _is_int(value):
        raise SnapshotError(f"{where}.{field}: expected an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise SnapshotError(f"{where}.{field}: {value} out of range {bound}")
    return int(value)


def number(
    d: Mapping[str, Any],
    field: str,
    where: str,
    *,
    default: float | None = None,
    minimum: float = 0.0,
    maximum: float | None = None,
) -> float:
    """A number in [minimum, maximum]; absent or null gives ``default`` (required if None)."""
    value = d.get(field)
    if value is None:
        if default is None:
            raise SnapshotError(f"{where}.{field}: required")
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise SnapshotError(f"{where}.{field}: expected a number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise SnapshotError(f"{where}.{field}: {value} out of range {bound}")
    return float(value)


def opt_duration(d: Mapping[str, Any], field: str, where: str) -> float | None:
    """Integer milliseconds as seconds; absent, null or 0 give None (no limit)."""
    ms = opt_int(d, field, where, default=0)
    return ms / 1000.0 if ms else None


def string(d: Mapping[str, Any], field: str, where: str, default: str | None = None) -> str:
    """A non-empty string; absent or null gives ``default`` (required if None)."""
    value = d.get(field)
    if value is None and default is not None:
        return default
    if not isinstance(value, str) or not value:
        raise SnapshotError(f"{where}.{field}: expected a non-empty string, got {value!r}")
    return value


def str_list(d: Mapping[str, Any], field: str, where: str) -> list[str]:
    """A list of strings; absent or null gives an empty list."""
    value = d.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise SnapshotError(f"{where}.{field}: expected a list, got {value!r}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise SnapshotError(f"{where}.{field}[{i}]: expected a string, got {item!r}")
    return list(value)


def str_map(d: Mapping[str, Any], field: str, where: str) -> dict[str, str]:
    """An object of string values; absent or null gives an empty dict."""
    value = d.get(field)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SnapshotError(f"{where}.{field}: expected an object, got {value!r}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise SnapshotError(f"{where}.{field}.{key}: expected a string, got {item!r}")
    return dict(value)
