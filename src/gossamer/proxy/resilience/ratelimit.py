"""Local rate limit of a service's inbound sidecar: a token bucket, optionally per caller.

A bucket holds at most ``burst`` tokens, starts full and refills at ``rps`` tokens per second;
each request takes one. ``check`` answers 0.0 when the request may pass, else the seconds until
the next token (the caller answers 429 with ``retry-after`` = that value rounded up).

With ``per_identity`` each caller identity (the peer's SPIFFE ID; ``""`` for unauthenticated
callers, who then share one bucket) gets its own bucket, kept in a bounded LRU map of
``max_identities`` entries; an identity evicted from it starts again with a full bucket.
Time is the caller's monotonic ``now`` in seconds.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from gossamer.proxy.resilience.fields import number, obj
from gossamer.proxy.snapshot.errors import SnapshotError

__all__ = ["MAX_IDENTITIES", "LocalRateLimiter", "TokenBucket"]

MAX_IDENTITIES = 10_000


class TokenBucket:
    """One bucket: ``tokens`` as of ``stamp``."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp

    def take(self, rate: float, capacity: float, now: float) -> float:
        """Take a token if there is one (0.0), else the seconds until there is one."""
        elapsed = now - self.stamp
        tokens = self.tokens
        if elapsed > 0:
            tokens = min(capacity, tokens + elapsed * rate)
            self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / rate


class LocalRateLimiter:
    """Token-bucket admission for one inbound service; see the module docstring."""

    __slots__ = ("_buckets", "_shared", "burst", "max_identities", "per_identity", "rps")

    def __init__(
        self,
        rps: float,
        burst: float | None = None,
        per_identity: bool = False,
        *,
        max_identities: int = MAX_IDENTITIES,
    ) -> None:
        if not rps > 0:
            raise ValueError("rps must be > 0")
        if burst is None or burst <= 0:
            burst = max(1.0, float(math.ceil(rps)))
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rps = float(rps)
        self.burst = float(burst)
        self.per_identity = per_identity
        self.max_identities = max(1, max_identities)
        self._shared: TokenBucket | None = None
        self._buckets: OrderedDict[bytes, TokenBucket] = OrderedDict()

    @classmethod
    def from_snapshot(cls, d: Any, where: str) -> LocalRateLimiter:
        """Compile ``{"requests_per_second", "burst", "per_identity"}`` (burst absent or 0: one
        second's worth, at least 1); ``SnapshotError`` names a bad field."""
        d = obj(d, where)
        rps = number(d, "requests_per_second", where)
        if rps <= 0:
            raise SnapshotError(f"{where}.requests_per_second: must be > 0")
        burst = number(d, "burst", where, default=0.0)
        if 0 < burst < 1:
            raise SnapshotError(f"{where}.burst: must be at least 1 (or 0 for the default)")
        per_identity = d.get("per_identity", False)
        if not isinstance(per_identity, bool):
            raise SnapshotError(f"{where}.per_identity: expected a boolean, got {per_identity!r}")
        return cls(rps, burst or None, per_identity)

    def check(self, identity: bytes, now: float) -> float:
        """0.0 when a request from ``identity`` (the caller's SPIFFE ID as on the wire) may
        pass now, else seconds until it could."""
        if not self.per_identity:
            bucket = self._shared
            if bucket is None:
                bucket = self._shared = TokenBucket(self.burst, now)
            return bucket.take(self.rps, self.burst, now)
        buckets = self._buckets
        bucket = buckets.get(identity)
        if bucket is None:
            if len(buckets) >= self.max_identities:
                buckets.popitem(last=False)
            bucket = buckets[identity] = TokenBucket(self.burst, now)
        else:
            buckets.move_to_end(identity)
        return bucket.take(self.rps, self.burst, now)

    def tracked_identities(self) -> int:
        """How many per-identity buckets are held (bounded by ``max_identities``)."""
        return len(self._buckets)
