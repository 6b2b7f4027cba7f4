"""Outlier detection: consecutive-failure counters, ejection time, caps, and returns."""

from __future__ import annotations

import pytest

from gossamer.proxy.resilience.outlier import (
    CONNECT_FAILURE,
    ERROR_5XX,
    GATEWAY_ERROR,
    OK,
    OutlierDetector,
    classify,
)
from gossamer.proxy.snapshot.errors import SnapshotError

A, B, C = ("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)


def detector(**overrides: float) -> OutlierDetector:
    fields: dict[str, float] = {
        "consecutive_5xx": 5,
        "consecutive_gateway_errors": 0,
        "consecutive_connect_failures": 0,
        "interval": 10.0,
        "base_ejection": 30.0,
        "max_ejection_percent": 50.0,
    }
    fields.update(overrides)
    d = OutlierDetector(**fields)  # type: ignore[arg-type]
    d.set_endpoints([A, B, C])
    return d


class TestCounters:
    def test_ejected_after_exactly_the_threshold(self) -> None:
        """Five consecutive 5xx eject the endpoint on the fifth, not before."""
        d = detector()
        for _ in range(4):
            assert not d.record(A, ERROR_5XX, 0.0)
        assert not d.is_ejected(A, 0.0)
        assert d.record(A, ERROR_5XX, 0.0)
        assert d.is_ejected(A, 0.0)
        assert d.ejected(0.0) == {A}

    def test_success_resets_the_counters(self) -> None:
        """An ok in the middle of a run of errors starts the count again."""
        d = detector()
        for _ in range(4):
            d.record(A, ERROR_5XX, 0.0)
        d.record(A, OK, 0.0)
        for _ in range(4):
            d.record(A, ERROR_5XX, 0.0)
        assert not d.is_ejected(A, 0.0)

    def test_consecutive_5xx_counts_gateway_errors_and_connect_failures(self) -> None:
        """Mixed error-5xx, gateway-error and connect-failure all count toward consecutive 5xx."""
        d = detector()
        for outcome in (ERROR_5XX, GATEWAY_ERROR, CONNECT_FAILURE, ERROR_5XX):
            d.record(A, outcome, 0.0)
        assert d.record(A, GATEWAY_ERROR, 0.0)

    def test_gateway_counter_ignores_plain_5xx_and_is_reset_by_it(self) -> None:
        """consecutive gateway errors: 502/503/504 and connect failures count; a 500 breaks
        the run."""
        d = detector(consecutive_5xx=0, consecutive_gateway_errors=3)
        d.record(A, GATEWAY_ERROR, 0.0)
        d.record(A, CONNECT_FAILURE, 0.0)
        d.record(A, ERROR_5XX, 0.0)
        d.record(A, GATEWAY_ERROR, 0.0)
        assert not d.is_ejected(A, 0.0)
        d.record(A, GATEWAY_ERROR, 0.0)
        assert d.record(A, GATEWAY_ERROR, 0.0)

    def test_connect_counter_counts_only_connect_failures(self) -> None:
        """consecutive connect failures: any response (even a 5xx) breaks the run."""
        d = detector(consecutive_5xx=0, consecutive_connect_failures=2)
        d.record(A, CONNECT_FAILURE, 0.0)
        d.record(A, GATEWAY_ERROR, 0.0)
        assert not d.record(A, CONNECT_FAILURE, 0.0)
        assert d.record(A, CONNECT_FAILURE, 0.0)

    def test_zero_thresholds_disable_ejection(self) -> None:
        """With every threshold at 0 nothing is ever ejected."""
        d = detector(consecutive_5xx=0)
        for _ in range(100):
            d.record(A, CONNECT_FAILURE, 0.0)
        assert d.ejected(0.0) == set()

    def test_classify_maps_statuses_and_causes(self) -> None:
        """Statuses and no-response causes map to the four outcomes."""
        assert classify(200) == OK and classify(404) == OK
        assert classify(500) == ERROR_5XX and classify(501) == ERROR_5XX
        assert {classify(s) for s in (502, 503, 504)} == {GATEWAY_ERROR}
        assert classify(None, "connect-failed") == CONNECT_FAILURE
        assert classify(None, "upstream-reset") == GATEWAY_ERROR
        assert classify(None, "upstream-timeout") == GATEWAY_ERROR

    def test_unknown_outcome_is_an_error(self) -> None:
        """A misspelt outcome is a programming error, not silently ignored."""
        with pytest.raises(ValueError, match="outcome"):
            detector().record(A, "5xx", 0.0)


class TestEjectionTime:
    def test_endpoint_returns_after_the_base_ejection_time(self) -> None:
        """A first ejection lasts base_ejection; then the endpoint is back."""
        d = detector()
        for _ in range(5):
            d.record(A, ERROR_5XX, 100.0)
        assert d.is_ejected(A, 129.9)
        assert not d.is_ejected(A, 130.0)
        assert d.ejected(130.0) == set()

    def test_repeat_ejections_grow_linearly(self) -> None:
        """The n-th ejection lasts n x base (when the endpoint fails again right away)."""
        d = detector(interval=100.0, base_ejection=10.0)
        now = 0.0
        for n in (1, 2, 3):
            for _ in range(5):
                d.record(A, ERROR_5XX, now)
            assert d.is_ejected(A, now + n * 10.0 - 0.01)
            assert not d.is_ejected(A, now + n * 10.0)
            now += n * 10.0
        assert d.ejection_count(A) == 3

    def test_ejection_time_is_capped(self) -> None:
        """Ejection time never exceeds max_ejection (300 s by default)."""
        d = detector(base_ejection=120.0, interval=1000.0)
        now = 0.0
        for _ in range(4):
            for _ in range(5):
                d.record(A, ERROR_5XX, now)
            assert not d.is_ejected(A, now + 300.0)
            now += 300.0

    def test_healthy_intervals_reduce_the_multiplier(self) -> None:
        """Each full interval back in service takes one ejection off the multiplier."""
        d = detector(interval=10.0, base_ejection=10.0)
        now = 0.0
        for _ in range(3):  # three ejections back to back: 10, 20, 30 s
            for _ in range(5):
                d.record(A, ERROR_5XX, now)
            now = now + 10.0 * d.ejection_count(A)
        assert d.ejection_count(A) == 3
        now += 25.0  # two full healthy intervals
        for _ in range(5):
            d.record(A, ERROR_5XX, now)
        assert d.ejection_count(A) == 2  # 3 - 2 + 1
        assert not d.is_ejected(A, now + 20.0)

    def test_outcomes_while_ejected_are_ignored(self) -> None:
        """Late results for an ejected endpoint neither extend nor reset its ejection."""
        d = detector()
        for _ in range(5):
            d.record(A, ERROR_5XX, 0.0)
        for _ in range(20):
            assert not d.record(A, ERROR_5XX, 1.0)
        assert d.ejection_count(A) == 1
        assert not d.is_ejected(A, 30.0)
        assert not d.record(A, ERROR_5XX, 30.0)  # counters restarted at ejection


class TestCap:
    def test_max_ejection_percent_is_respected(self) -> None:
        """At 50% of three endpoints only one is ejected; the second waits for room."""
        d = detector()
        for _ in range(5):
            d.record(A, ERROR_5XX, 0.0)
            d.record(B, ERROR_5XX, 0.0)
        assert d.ejected(0.0) == {A}
        assert not d.is_ejected(B, 0.0)
        assert d.record(B, ERROR_5XX, 30.0)  # A is back: B's next error ejects it
        assert d.ejected(30.0) == {B}

    def test_at_least_one_endpoint_always_stays(self) -> None:
        """Even at 100%, the last endpoint in service is never ejected; a lone one never is."""
        d = detector(max_ejection_percent=100.0)
        for key in (A, B, C):
            for _ in range(5):
                d.record(key, ERROR_5XX, 0.0)
        assert len(d.ejected(0.0)) == 2
        lone = detector(max_ejection_percent=100.0)
        lone.set_endpoints([A])
        for _ in range(10):
            lone.record(A, ERROR_5XX, 0.0)
        assert not lone.is_ejected(A, 0.0)

    def test_small_percent_still_allows_one_ejection(self) -> None:
        """As Envoy: 10% of three rounds down to 0 but one ejection is still allowed; 0%
        allows none."""
        d = detector(max_ejection_percent=10.0)
        for key in (A, B):
            for _ in range(5):
                d.record(key, ERROR_5XX, 0.0)
        assert d.ejected(0.0) == {A}
        off = detector(max_ejection_percent=0.0)
        for _ in range(5):
            off.record(A, ERROR_5XX, 0.0)
        assert off.ejected(0.0) == set()

    def test_set_endpoints_keeps_state_of_survivors(self) -> None:
        """Endpoints still present keep their ejection; removed ones are forgotten."""
        d = detector()
        for _ in range(5):
            d.record(A, ERROR_5XX, 0.0)
        d.set_endpoints([A, B, C, ("10.0.0.4", 1)])
        assert d.is_ejected(A, 1.0)
        d.set_endpoints([B, C])
        assert d.ejected(1.0) == set()
        assert not d.is_ejected(A, 1.0)

    def test_adopt_carries_ejections_over_a_config_update(self) -> None:
        """A replacing detector takes over the ejected set."""
        old = detector()
        for _ in range(5):
            old.record(A, ERROR_5XX, 0.0)
        new = detector(consecutive_5xx=3)
        new.adopt(old)
        assert new.is_ejected(A, 1.0)


class TestSnapshot:
    def test_from_snapshot_reads_the_control_plane_form(self) -> None:
        """Counts, interval_ms, base_ejection_ms and max_ejection_percent are compiled."""
        d = OutlierDetector.from_snapshot(
            {
                "consecutive_5xx": 3,
                "consecutive_gateway_errors": 4,
                "consecutive_connect_failures": 2,
                "interval_ms": 5000,
                "base_ejection_ms": 1500,
                "max_ejection_percent": 34,
            },
            "outlier",
        )
        assert (
            d.consecutive_5xx,
            d.consecutive_gateway_errors,
            d.consecutive_connect_failures,
        ) == (3, 4, 2)
        assert (d.interval, d.base_ejection, d.max_ejection_percent) == (5.0, 1.5, 34.0)
        assert d.max_ejection == 300.0

    def test_errors_name_the_field(self) -> None:
        """Bad fields raise SnapshotError naming them."""
        for raw, where in [
            ({"consecutive_5xx": -1}, r"outlier\.consecutive_5xx"),
            ({"max_ejection_percent": 150}, r"outlier\.max_ejection_percent"),
            ({"interval_ms": 0}, r"outlier\.interval_ms"),
            ({"base_ejection_ms": "30s"}, r"outlier\.base_ejection_ms"),
        ]:
            with pytest.raises(SnapshotError, match=where):
                OutlierDetector.from_snapshot(raw, "outlier")
