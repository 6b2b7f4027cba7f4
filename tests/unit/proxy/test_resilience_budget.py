"""Retry budgets (Linkerd-style): ratio of requests plus a floor per second, over a window."""

from __future__ import annotations

import pytest

from gossamer.proxy.resilience.budget import RetryBudget
from gossamer.proxy.snapshot.errors import SnapshotError


class TestBudget:
    def test_floor_allows_min_per_second_times_window_without_traffic(self) -> None:
        """With no requests, exactly min_per_second * window retries are granted."""
        budget = RetryBudget(ratio=0.2, min_per_second=2, window=5)
        granted = sum(budget.try_retry(100.0) for _ in range(50))
        assert granted == 10

    def test_ratio_of_requests_is_added(self) -> None:
        """100 requests at ratio 0.2 add 20 retries on top of the floor."""
        budget = RetryBudget(ratio=0.2, min_per_second=1, window=10)
        for _ in range(100):
            budget.record_request(50.0)
        granted = sum(budget.try_retry(50.0) for _ in range(100))
        assert granted == 10 + 20

    def test_refused_retry_consumes_nothing(self) -> None:
        """A refused try_retry leaves the budget as it was; a new request reopens it."""
        budget = RetryBudget(ratio=1.0, min_per_second=0, window=1)
        budget.record_request(0.0)
        assert budget.try_retry(0.0)
        assert not budget.try_retry(0.0)
        assert not budget.try_retry(0.0)
        budget.record_request(0.0)
        assert budget.try_retry(0.0)

    def test_old_requests_and_retries_leave_the_window(self) -> None:
        """After a full window the counts are gone: the budget is back to its floor."""
        budget = RetryBudget(ratio=0.5, min_per_second=0, window=10)
        for _ in range(100):
            budget.record_request(0.0)
        assert budget.available(0.0) == pytest.approx(50.0)
        assert budget.available(9.9) == pytest.approx(50.0)
        assert budget.available(10.0) == 0.0
        budget.record_request(30.0)
        assert budget.available(30.0) == pytest.approx(0.5)

    def test_window_slides_bucket_by_bucket(self) -> None:
        """Requests recorded 4 s apart in a 10 s window expire separately."""
        budget = RetryBudget(ratio=1.0, min_per_second=0, window=10)
        for _ in range(10):
            budget.record_request(0.0)
        for _ in range(5):
            budget.record_request(4.0)
        assert budget.available(9.5) == pytest.approx(15.0)
        assert budget.available(10.5) == pytest.approx(5.0)
        assert budget.available(14.5) == pytest.approx(0.0)

    def test_failing_backend_with_unlimited_attempts_stays_within_budget(self) -> None:
        """Every call fails and the caller would retry forever: over 30 s at 200 calls/s
        the retries granted in each 10 s window stay within ratio * requests + min * window,
        and over the whole run within ratio * requests + min * duration."""
        ratio, floor, window = 0.2, 10.0, 10.0
        budget = RetryBudget(ratio=ratio, min_per_second=floor, window=window)
        per_window = {0: [0, 0], 1: [0, 0], 2: [0, 0]}
        for i in range(6000):  # 200 per second for 30 s
            now = i / 200
            budget.record_request(now)
            counts = per_window[int(now // window)]
            counts[0] += 1
            attempts = 0
            while attempts < 1000 and budget.try_retry(
                now
            ):  # "unlimited": only the budget stops it
                attempts += 1
            counts[1] += attempts
        total_requests = sum(c[0] for c in per_window.values())
        total_retries = sum(c[1] for c in per_window.values())
        for requests, retries in per_window.values():
            assert retries <= ratio * requests + floor * window
            assert retries >= ratio * requests  # the budget is actually used
        assert total_retries <= ratio * total_requests + floor * 30
        assert total_requests + total_retries <= 6000 * (1 + ratio) + floor * 30

    def test_time_going_backwards_counts_in_the_current_bucket(self) -> None:
        """A now earlier than one seen before neither crashes nor resets the window."""
        budget = RetryBudget(ratio=1.0, min_per_second=0, window=10)
        budget.record_request(5.0)
        budget.record_request(4.0)
        assert budget.available(5.0) == pytest.approx(2.0)

    def test_adopt_keeps_counts_across_a_config_update(self) -> None:
        """A replacing budget with the same window takes over the counts."""
        old = RetryBudget(ratio=0.0, min_per_second=1, window=10)
        assert sum(old.try_retry(1.0) for _ in range(20)) == 10
        new = RetryBudget(ratio=0.0, min_per_second=1, window=10)
        new.adopt(old)
        assert not new.try_retry(1.0)


class TestSnapshot:
    def test_from_snapshot_reads_the_fields(self) -> None:
        """ratio, min_per_second and window_ms are compiled (window in seconds)."""
        budget = RetryBudget.from_snapshot(
            {"ratio": 0.1, "min_per_second": 5, "window_ms": 2000}, "b"
        )
        assert (budget.ratio, budget.min_per_second, budget.window) == (0.1, 5.0, 2.0)
        assert budget.reserve == 10.0

    def test_errors_name_the_field(self) -> None:
        """Bad fields raise SnapshotError naming them."""
        for raw, where in [
            ({"ratio": -0.1}, r"budget\.ratio"),
            ({"min_per_second": "ten"}, r"budget\.min_per_second"),
            ({"window_ms": 0}, r"budget\.window_ms"),
        ]:
            with pytest.raises(SnapshotError, match=where):
                RetryBudget.from_snapshot(raw, "budget")
