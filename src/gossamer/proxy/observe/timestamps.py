"""The times the sidecar's logs write: RFC 3339 in UTC with milliseconds, made cheaply.

``utc_millis`` is called once per access-log line and per audit record; formatting a
``datetime`` each time costs several microseconds, so the text of the current second is kept
(one tuple read and written whole: safe from any thread) and the milliseconds' text is taken
from a table of the thousand (a format per call cost a microsecond of the audit record's).

``duration_ms`` is a duration in nanoseconds as milliseconds to the microsecond, the number
the logs and audit records write (an integer division: ``round(x, 3)`` costs 0.5 us here).
"""

from __future__ import annotations

import time

__all__ = ["duration_ms", "utc_millis"]

_second: tuple[int, str] = (-1, "")  # (a Unix second, its text up to the seconds)
_MILLIS = tuple(f".{millis:03d}Z" for millis in range(1000))


def utc_millis(unix_ns: int) -> str:
    """``unix_ns`` (nanoseconds since the epoch) as ``2026-12-07T12:27:10.123Z``."""
    global _second
    millis = unix_ns // 1_000_000
    second = millis // 1000
    cached, text = _second
    if cached != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = (second, text)
    return text + _MILLIS[millis - second * 1000]


def duration_ms(nanoseconds: int) -> float:
    """``nanoseconds`` in milliseconds, rounded to the microsecond (half up)."""
    return ((nanoseconds + 500) // 1000) / 1000
