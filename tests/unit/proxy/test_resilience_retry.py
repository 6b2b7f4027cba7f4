"""Retry policies: conditions, methods, backoff, and snapshot validation."""

from __future__ import annotations

import random

import pytest

from gossamer.proxy.resilience.retry import DEFAULT_METHODS, RetryPolicy
from gossamer.proxy.snapshot.errors import SnapshotError


def policy(**fields: object) -> RetryPolicy:
    raw: dict[str, object] = {"attempts": 3, "on": []}
    raw.update(fields)
    return RetryPolicy.from_snapshot(raw, "retry")


class TestStatusConditions:
    def test_5xx_covers_500_to_599(self) -> None:
        """5xx retries every status from 500 to 599 and nothing below."""
        p = policy(on=["5xx"])
        assert all(p.retriable_status(s) for s in range(500, 600))
        assert not any(p.retriable_status(s) for s in (200, 404, 429, 499, 600))

    def test_gateway_error_covers_502_503_504_only(self) -> None:
        """gateway-error retries 502, 503 and 504, not 500."""
        p = policy(on=["gateway-error"])
        assert [s for s in range(400, 600) if p.retriable_status(s)] == [502, 503, 504]

    def test_retriable_status_codes_list(self) -> None:
        """Listed status codes are retried (with or without naming retriable-status-codes)."""
        p = policy(on=["retriable-status-codes"], status_codes=[409, 429])
        assert p.retriable_status(409) and p.retriable_status(429)
        assert not p.retriable_status(500)
        assert policy(status_codes=[409]).retriable_status(409)

    def test_grpc_conditions_check_grpc_status(self) -> None:
        """gRPC conditions match the grpc-status value, whatever the HTTP status."""
        p = policy(
            on=["unavailable", "resource-exhausted", "cancelled", "deadline-exceeded", "internal"]
        )
        for code in (1, 4, 8, 13, 14):
            assert p.retriable_status(200, code), code
        for code in (0, 2, 3, 5, 7, 16):
            assert not p.retriable_status(200, code), code
        assert not p.retriable_status(200, None)
        only_unavailable = policy(on=["unavailable"])
        assert only_unavailable.retriable_status(200, 14)
        assert not only_unavailable.retriable_status(200, 13)


class TestCauses:
    def test_reset_covers_resets_and_per_try_timeouts(self) -> None:
        """reset retries upstream-reset, upstream-timeout and connect-failed."""
        p = policy(on=["reset"])
        assert p.retriable_cause("upstream-reset")
        assert p.retriable_cause("upstream-timeout")
        assert p.retriable_cause("connect-failed")

    def test_connect_failure_covers_only_connect_failures(self) -> None:
        """connect-failure retries connect-failed and nothing else."""
        p = policy(on=["connect-failure"])
        assert p.retriable_cause("connect-failed")
        assert not p.retriable_cause("upstream-reset")
        assert not p.retriable_cause("upstream-timeout")

    def test_5xx_and_gateway_error_include_failures_without_response(self) -> None:
        """As in Envoy, 5xx and gateway-error also retry resets, per-try timeouts and connect
        failures; a status-code-only policy retries none of them."""
        for condition in ("5xx", "gateway-error"):
            p = policy(on=[condition])
            assert all(
                p.retriable_cause(c)
                for c in ("connect-failed", "upstream-reset", "upstream-timeout")
            )
        codes_only = policy(on=["retriable-status-codes"], status_codes=[503])
        assert not codes_only.retriable_cause("connect-failed")


class TestMethodsAndLimits:
    def test_default_methods_are_idempotent_ones(self) -> None:
        """Without methods: GET HEAD OPTIONS PUT DELETE TRACE, never POST or PATCH."""
        p = policy()
        assert p.methods == DEFAULT_METHODS
        for method in (b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"):
            assert p.allows_method(method)
        assert not p.allows_method(b"POST")
        assert not p.allows_method(b"PATCH")

    def test_configured_methods_replace_the_default(self) -> None:
        """A methods list (any case) replaces the default set."""
        p = policy(methods=["post", "GET"])
        assert p.allows_method(b"POST") and p.allows_method(b"GET")
        assert not p.allows_method(b"PUT")

    def test_snapshot_fields_are_compiled(self) -> None:
        """attempts are retries (max_tries one more); durations in seconds; body limit kept."""
        p = policy(
            attempts=2,
            per_try_timeout_ms=500,
            backoff_base_ms=10,
            backoff_max_ms=80,
            max_body_bytes=1024,
        )
        assert (p.attempts, p.max_tries) == (2, 3)
        assert p.per_try_timeout == 0.5
        assert (p.backoff_base, p.backoff_max) == (0.01, 0.08)
        assert p.max_body_bytes == 1024
        assert policy(per_try_timeout_ms=None).per_try_timeout is None

    def test_errors_name_the_field(self) -> None:
        """Bad values raise SnapshotError naming the field path."""
        cases: list[tuple[dict[str, object], str]] = [
            ({"on": ["5xx", "sometimes"]}, r"retry\.on\[1\]"),
            ({"attempts": -1}, r"retry\.attempts"),
            ({"attempts": True}, r"retry\.attempts"),
            ({"status_codes": [700]}, r"retry\.status_codes\[0\]"),
            ({"methods": ["G ET"]}, r"retry\.methods\[0\]"),
            ({"backoff_base_ms": 100, "backoff_max_ms": 10}, r"retry\.backoff_max_ms"),
            ({"per_try_timeout_ms": "1s"}, r"retry\.per_try_timeout_ms"),
        ]
        for fields, where in cases:
            with pytest.raises(SnapshotError, match=where):
                policy(**fields)
        with pytest.raises(SnapshotError, match="retry: expected an object"):
            RetryPolicy.from_snapshot([], "retry")


class TestBackoff:
    def test_backoff_is_full_jitter_under_an_exponential_cap(self) -> None:
        """Each wait lies in [0, min(max, base * 2**attempt)] and uses the whole range."""
        p = policy(backoff_base_ms=25, backoff_max_ms=250)
        rng = random.Random(5)
        for attempt, ceiling in [(0, 0.025), (1, 0.05), (2, 0.1), (3, 0.2), (4, 0.25), (40, 0.25)]:
            waits = [p.backoff(attempt, rng) for _ in range(2000)]
            assert min(waits) >= 0.0 and max(waits) <= ceiling + 1e-12
            assert min(waits) < ceiling * 0.05 and max(waits) > ceiling * 0.95
            assert abs(sum(waits) / len(waits) - ceiling / 2) < ceiling * 0.05

    def test_max_defaults_to_ten_times_base(self) -> None:
        """Without backoff_max_ms the cap is 10 x the base."""
        p = policy(backoff_base_ms=20)
        assert p.backoff_max == pytest.approx(0.2)
