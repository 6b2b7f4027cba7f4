"""Local rate limits: token bucket refill, burst, retry-after, per-identity buckets."""

from __future__ import annotations

import math

import pytest

from gossamer.proxy.resilience.ratelimit import LocalRateLimiter
from gossamer.proxy.snapshot.errors import SnapshotError


def test_bucket_starts_full_and_allows_the_burst() -> None:
    """A fresh limiter lets exactly ``burst`` requests through at once."""
    limiter = LocalRateLimiter(rps=10, burst=5)
    results = [limiter.check(b"", 0.0) for _ in range(6)]
    assert results[:5] == [0.0] * 5
    assert results[5] > 0.0


def test_retry_after_is_time_until_the_next_token() -> None:
    """With the bucket empty at 10/s, the wait is 0.1 s, less as time passes."""
    limiter = LocalRateLimiter(rps=10, burst=1)
    assert limiter.check(b"", 0.0) == 0.0
    assert limiter.check(b"", 0.0) == pytest.approx(0.1)
    assert limiter.check(b"", 0.04) == pytest.approx(0.06)
    assert limiter.check(b"", 0.1) == 0.0
    slow = LocalRateLimiter(rps=0.5, burst=1)
    slow.check(b"", 0.0)
    assert math.ceil(slow.check(b"", 0.0)) == 2  # the caller's retry-after header value


def test_refill_is_capped_at_burst() -> None:
    """A long idle period refills up to burst, not beyond."""
    limiter = LocalRateLimiter(rps=100, burst=3)
    for _ in range(3):
        limiter.check(b"", 0.0)
    allowed = sum(limiter.check(b"", 1000.0) == 0.0 for _ in range(10))
    assert allowed == 3


def test_long_run_rate_matches_rps() -> None:
    """Offered 1000/s for 10 s against 100/s with burst 20: about 100*10 + 20 pass."""
    limiter = LocalRateLimiter(rps=100, burst=20)
    allowed = sum(limiter.check(b"", i / 1000) == 0.0 for i in range(10_000))
    assert 1000 + 20 - 2 <= allowed <= 1000 + 20


def test_shared_bucket_ignores_identity() -> None:
    """Without per_identity all callers draw from one bucket."""
    limiter = LocalRateLimiter(rps=1, burst=2)
    assert limiter.check(b"spiffe://a", 0.0) == 0.0
    assert limiter.check(b"spiffe://b", 0.0) == 0.0
    assert limiter.check(b"spiffe://c", 0.0) > 0.0


def test_per_identity_buckets_are_independent() -> None:
    """With per_identity each caller has its own full bucket."""
    limiter = LocalRateLimiter(rps=1, burst=2, per_identity=True)
    for caller in ("spiffe://a", "spiffe://b"):
        assert limiter.check(caller, 0.0) == 0.0
        assert limiter.check(caller, 0.0) == 0.0
        assert limiter.check(caller, 0.0) > 0.0


def test_identity_map_is_bounded_lru() -> None:
    """The per-identity map never exceeds its bound; the least recently seen is evicted."""
    limiter = LocalRateLimiter(rps=1, burst=1, per_identity=True, max_identities=3)
    for caller in ("a", "b", "c"):
        limiter.check(caller, 0.0)
    limiter.check(b"a", 0.0)  # a is now most recent (and empty)
    limiter.check(b"d", 0.0)  # evicts b
    assert limiter.tracked_identities() == 3
    assert limiter.check(b"a", 0.0) > 0.0  # still tracked, still empty
    assert limiter.check(b"b", 0.0) == 0.0  # evicted: back with a full bucket
    big = LocalRateLimiter(rps=1, burst=1, per_identity=True)
    for i in range(12_000):
        big.check(f"id-{i}", 0.0)
    assert big.tracked_identities() == 10_000


def test_from_snapshot_and_errors() -> None:
    """The inbound rate_limit object compiles; bad fields are named."""
    limiter = LocalRateLimiter.from_snapshot(
        {"requests_per_second": 100, "burst": 200, "per_identity": True}, "rate_limit"
    )
    assert (limiter.rps, limiter.burst, limiter.per_identity) == (100.0, 200.0, True)
    assert LocalRateLimiter.from_snapshot({"requests_per_second": 2.5}, "r").burst == 3.0
    for raw, where in [
        ({"requests_per_second": 0}, r"rate_limit\.requests_per_second"),
        ({"burst": 5}, r"rate_limit\.requests_per_second: required"),
        ({"requests_per_second": 1, "burst": 0.5}, r"rate_limit\.burst"),
        ({"requests_per_second": 1, "per_identity": "yes"}, r"rate_limit\.per_identity"),
    ]:
        with pytest.raises(SnapshotError, match=where):
            LocalRateLimiter.from_snapshot(raw, "rate_limit")
