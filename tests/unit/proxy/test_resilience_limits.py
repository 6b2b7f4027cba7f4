"""Connection-pool limits: 0 is unlimited, otherwise strict upper bounds."""

from __future__ import annotations

import pytest

from gossamer.proxy.resilience.limits import UNLIMITED, ConnectionLimits
from gossamer.proxy.snapshot.errors import SnapshotError


def test_zero_means_unlimited_for_every_field() -> None:
    """All-zero limits allow any count."""
    limits = ConnectionLimits.from_snapshot(
        {"max_connections": 0, "max_pending": 0, "max_requests_per_connection": 0}, "pool"
    )
    assert limits == UNLIMITED and limits.unlimited
    assert limits.can_open(10**6)
    assert limits.can_queue(10**6)
    assert not limits.connection_exhausted(10**6)


def test_max_connections_bounds_can_open() -> None:
    """With max_connections 2, a third connection may not open."""
    limits = ConnectionLimits(max_connections=2)
    assert limits.can_open(0) and limits.can_open(1)
    assert not limits.can_open(2)
    assert limits.can_queue(1000)


def test_max_pending_bounds_can_queue() -> None:
    """With max_pending 3, the fourth waiting request is refused."""
    limits = ConnectionLimits(max_pending=3)
    assert limits.can_queue(2)
    assert not limits.can_queue(3)
    assert not limits.unlimited


def test_requests_per_connection_exhausts_a_connection() -> None:
    """A connection that served max_requests_per_connection requests is exhausted."""
    limits = ConnectionLimits(max_requests_per_connection=100)
    assert not limits.connection_exhausted(99)
    assert limits.connection_exhausted(100)


def test_absent_fields_are_unlimited_and_bad_ones_are_named() -> None:
    """Missing fields default to 0; negative or non-integer ones raise SnapshotError."""
    assert ConnectionLimits.from_snapshot({"max_pending": 5}, "pool").max_connections == 0
    with pytest.raises(SnapshotError, match=r"pool\.max_pending"):
        ConnectionLimits.from_snapshot({"max_pending": -1}, "pool")
    with pytest.raises(SnapshotError, match=r"pool\.max_connections"):
        ConnectionLimits.from_snapshot({"max_connections": 1.5}, "pool")
