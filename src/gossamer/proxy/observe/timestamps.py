"""The times the sidecar's logs write: RFC 3339 in UTC with milliseconds, made cheaply.

``utc_millis`` is called once per access-log line and per audit record; formatting a
``datetime`` each time costs several microseconds, so the text of the current second is kept
and only the milliseconds are added (one tuple read and written whole: safe from any thread).
"""

from __future__ import annotations

import time

__all__ = ["utc_millis"]

_second: tuple[int, str] = (-1, "")  # (a Unix second, its text up to the seconds)


def utc_millis(unix_ns: int) -> str:
    """``unix_ns`` (nanoseconds since the epoch) as ``2026-12-07T12:27:10.123Z``."""
    global _second
    second, millis = divmod(unix_ns // 1_000_000, 1000)
    cached, text = _second
    if cached != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = (second, text)
    return f"{text}.{millis:03d}Z"
