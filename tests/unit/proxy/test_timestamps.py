"""The logs' timestamps (proxy/observe/timestamps.py): the cached second gives the same text
as formatting the datetime, across second, day and year boundaries and in any order."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from gossamer.proxy.observe.timestamps import utc_millis


def _expected(unix_ns: int) -> str:
    when = datetime.fromtimestamp(unix_ns // 1_000_000 / 1000, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_the_text_is_rfc3339_utc_milliseconds_as_datetime_writes_it() -> None:
    edges = [0, 999_999, 1_000_000, 1_796_688_000_000_000_000 - 1, 1_796_688_000_000_000_000,
             1_798_761_599_999_000_000, 1_798_761_600_000_000_000]  # fmt: skip
    draws = random.Random(7)
    times = edges + [draws.randrange(0, 4_000_000_000 * 10**9) for _ in range(2000)]
    for unix_ns in times + times[::-1]:
        assert utc_millis(unix_ns) == _expected(unix_ns), unix_ns
    assert utc_millis(1_796_688_000_123_456_789) == "2026-12-08T00:00:00.123Z"
