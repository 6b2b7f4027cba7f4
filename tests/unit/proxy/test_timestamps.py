"""The logs' timestamps (proxy/observe/timestamps.py): the cached second gives the same text
as formatting the datetime, across second, day and year boundaries and in any order."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from gossamer.proxy.observe.timestamps import duration_ms, utc_millis


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


def test_durations_are_milliseconds_to_the_microsecond() -> None:
    assert duration_ms(0) == 0.0
    assert duration_ms(1_250_000) == 1.25
    assert duration_ms(1_234_499) == 1.234  # below half a microsecond: down
    assert duration_ms(1_234_500) == 1.235  # half: up
    assert duration_ms(3_600_000_000_000) == 3_600_000.0
    draws = random.Random(11)
    for _ in range(2000):
        nanoseconds = draws.randrange(0, 10**13)
        assert abs(duration_ms(nanoseconds) - nanoseconds / 1e6) <= 0.0005 + 1e-9
        assert duration_ms(nanoseconds) == round(duration_ms(nanoseconds), 3)
