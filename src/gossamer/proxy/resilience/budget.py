"""Retry budget of a service, as Linkerd's: retries may add at most a ratio of live traffic.

Over a sliding window, the retries allowed are ``min_per_second * window + ratio * requests``
(requests are first tries, recorded with ``record_request``); ``try_retry`` withdraws one when
the retries already made in the window leave room, so a failing service sees at most
``1 + ratio`` times its normal load plus a small floor, and retries can never multiply an
outage.

The window is kept as ``BUCKETS`` fixed buckets of ``window / BUCKETS`` seconds in two
preallocated integer lists with running totals: each call is O(1) amortised (a bucket is zeroed
once when time moves past it) and allocates nothing. The window therefore slides in steps of
one bucket. Time is the caller's monotonic ``now`` in seconds; a ``now`` earlier than one seen
before counts in the current bucket.
"""

from __future__ import annotations

from typing import Any

from gossamer.proxy.resilience.fields import number, obj, opt_int
from gossamer.proxy.snapshot.errors import SnapshotError

__all__ = ["BUCKETS", "RetryBudget"]

BUCKETS = 10


class RetryBudget:
    """Counts first tries and retries over a sliding window and grants retries within budget."""

    __slots__ = (
        "_bucket",
        "_bucket_width",
        "_requests",
        "_requests_total",
        "_retries",
        "_retries_total",
        "min_per_second",
        "ratio",
        "reserve",
        "window",
    )

    def __init__(self, ratio: float = 0.2, min_per_second: float = 10.0, window: float = 10.0):
        if ratio < 0 or min_per_second < 0 or window <= 0:
            raise ValueError("ratio and min_per_second must be >= 0, window > 0")
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self.reserve = min_per_second * window
        self._bucket_width = window / BUCKETS
        self._requests = [0] * BUCKETS
        self._retries = [0] * BUCKETS
        self._requests_total = 0
        self._retries_total = 0
        self._bucket: int | None = None  # absolute index of the current bucket

    @classmethod
    def from_snapshot(cls, d: Any, where: str) -> RetryBudget:
        """Compile ``{"ratio", "min_per_second", "window_ms"}``; ``SnapshotError`` names a bad
        field."""
        d = obj(d, where)
        ratio = number(d, "ratio", where, default=0.2, maximum=1000.0)
        floor = number(d, "min_per_second", where, default=10.0)
        window_ms = opt_int(d, "window_ms", where, default=10_000)
        if window_ms < 1:
            raise SnapshotError(f"{where}.window_ms: must be at least 1")
        return cls(ratio, floor, window_ms / 1000.0)

    def adopt(self, previous: RetryBudget) -> None:
        """Carry the counts of the budget this one replaces (same window), so a config update
        does not hand out a fresh reserve."""
        if previous.window == self.window:
            self._requests[:] = previous._requests
            self._retries[:] = previous._retries
            self._requests_total = previous._requests_total
            self._retries_total = previous._retries_total
            self._bucket = previous._bucket

    def _advance(self, now: float) -> int:
        """Move the window to ``now``, zeroing the buckets that fell out; the slot to count in."""
        index = int(now // self._bucket_width)
        current = self._bucket
        if current is None or index > current:
            if current is None or index - current >= BUCKETS:
                for slot in range(BUCKETS):
                    self._requests[slot] = 0
                    self._retries[slot] = 0
                self._requests_total = 0
                self._retries_total = 0
            else:
                for absolute in range(current + 1, index + 1):
                    slot = absolute % BUCKETS
                    self._requests_total -= self._requests[slot]
                    self._retries_total -= self._retries[slot]
                    self._requests[slot] = 0
                    self._retries[slot] = 0
            self._bucket = current = index
        return current % BUCKETS

    def record_request(self, now: float) -> None:
        """Count one first try (not a retry)."""
        slot = self._advance(now)
        self._requests[slot] += 1
        self._requests_total += 1

    def available(self, now: float) -> float:
        """Retries that may still be made in the current window (may be fractional)."""
        self._advance(now)
        allowed = self.reserve + self.ratio * self._requests_total
        return allowed - self._retries_total

    def try_retry(self, now: float) -> bool:
        """Withdraw one retry if the budget has room; False means do not retry."""
        slot = self._advance(now)
        if self._retries_total + 1 > self.reserve + self.ratio * self._requests_total:
            return False
        self._retries[slot] += 1
        self._retries_total += 1
        return True
