"""TrafficPolicy: every refusal with its exact path, its snapshot form and its defaults."""

from __future__ import annotations

from typing import Any

import pytest

from gossamer.config import TrafficPolicy, default_policy_snapshot
from tests.unit.config.traffic_docs import accepted, policy, refusal

FIELD_REFUSALS: dict[str, tuple[dict[str, Any], str, str]] = {
    "lb-type": ({"loadBalancer": {"type": "Random"}}, "spec.loadBalancer.type", "PeakEWMA"),
    "hash-cookie": ({"loadBalancer": {"type": "ConsistentHash", "hashOn": {"cookie": "a b"}}},
                    "spec.loadBalancer.hashOn.cookie", "cookie name"),
    "hash-header": ({"loadBalancer": {"type": "ConsistentHash", "hashOn": {"header": "a:b"}}},
                    "spec.loadBalancer.hashOn.header", "header name"),
    "pool-negative": ({"connectionPool": {"maxConnections": -1}},
                      "spec.connectionPool.maxConnections", "0"),
    "pool-unknown": ({"connectionPool": {"maxRequests": 5}}, "spec.connectionPool.maxRequests",
                     "unknown field"),
    "outlier-percent": ({"outlierDetection": {"maxEjectionPercent": 101}},
                        "spec.outlierDetection.maxEjectionPercent", "100"),
    "outlier-snake-case": ({"outlierDetection": {"consecutive_5xx": 3}},
                           "spec.outlierDetection.consecutive_5xx", "unknown field"),
    "outlier-interval": ({"outlierDetection": {"interval": "0s"}},
                         "spec.outlierDetection.interval", "greater than zero"),
    "timeout": ({"timeout": "15"}, "spec.timeout", "invalid duration"),
    "retry-on": ({"retry": {"on": ["always"]}}, "spec.retry.on[0]", "'5xx'"),
    "budget-ratio": ({"retryBudget": {"ratio": -0.1}}, "spec.retryBudget.ratio", "0"),
    "budget-min": ({"retryBudget": {"minRetriesPerSecond": 1.5}},
                   "spec.retryBudget.minRetriesPerSecond", "integer"),
    "budget-window-short": ({"retryBudget": {"window": "500ms"}}, "spec.retryBudget.window",
                            "between 1s and 60s"),
    "budget-window-long": ({"retryBudget": {"window": "2m"}}, "spec.retryBudget.window",
                           "between 1s and 60s"),
    "rate-zero": ({"rateLimit": {"requestsPerSecond": 0}}, "spec.rateLimit.requestsPerSecond",
                  "greater than 0"),
    "rate-missing": ({"rateLimit": {"burst": 5}}, "spec.rateLimit.requestsPerSecond",
                     "required"),
    "burst-zero": ({"rateLimit": {"requestsPerSecond": 5, "burst": 0}}, "spec.rateLimit.burst",
                   "1"),
    "per-identity-text": ({"rateLimit": {"requestsPerSecond": 5, "perIdentity": "yes"}},
                          "spec.rateLimit.perIdentity", "boolean"),
}  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "path", "fragment"), FIELD_REFUSALS.values(), ids=FIELD_REFUSALS.keys()
)
def test_field_refusal_names_its_path(spec: dict[str, Any], path: str, fragment: str) -> None:
    """A bad field value is refused at its exact path, saying what is expected."""
    problem = refusal(policy(**spec))
    assert (problem.kind, problem.path) == ("TrafficPolicy", path)
    assert fragment in problem.message


class TestCrossFieldRefusals:
    def test_consistent_hash_needs_hash_on(self) -> None:
        """ConsistentHash without hashOn has nothing to hash."""
        problem = refusal(policy(loadBalancer={"type": "ConsistentHash"}))
        assert problem.path == "spec.loadBalancer.hashOn"

    def test_hash_on_only_with_consistent_hash(self) -> None:
        """hashOn with another balancer would be silently ignored."""
        problem = refusal(policy(loadBalancer={"type": "RoundRobin", "hashOn": {"header": "x"}}))
        assert (problem.path, problem.message) == (
            "spec.loadBalancer.hashOn",
            "hashOn only applies to ConsistentHash",
        )

    @pytest.mark.parametrize("hash_on", [{}, {"header": "x-user", "cookie": "session"}])
    def test_hash_on_needs_exactly_one_source(self, hash_on: dict[str, str]) -> None:
        """hashOn names one header or one cookie, not none and not both."""
        problem = refusal(policy(loadBalancer={"type": "ConsistentHash", "hashOn": hash_on}))
        assert problem.path == "spec.loadBalancer.hashOn"

    def test_outlier_detection_that_never_ejects(self) -> None:
        """Every threshold at 0 turns outlier detection into a no-op: refused."""
        outlier = {"consecutive5xx": 0, "consecutiveGatewayErrors": 0}
        problem = refusal(policy(outlierDetection=outlier))
        assert problem.path == "spec.outlierDetection"

    def test_max_ejection_time_below_base(self) -> None:
        """Ejections grow from baseEjectionTime up to maxEjectionTime, so max >= base."""
        outlier = {"baseEjectionTime": "1m", "maxEjectionTime": "30s"}
        problem = refusal(policy(outlierDetection=outlier))
        assert problem.path == "spec.outlierDetection.maxEjectionTime"

    def test_per_try_timeout_longer_than_default_timeout(self) -> None:
        """The policy's retry is checked against the policy's timeout."""
        problem = refusal(policy(timeout="1s", retry={"perTryTimeout": "2s"}))
        assert problem.path == "spec.retry.perTryTimeout"


class TestSnapshotForm:
    def test_full_policy(self) -> None:
        """Every section in snapshot form: durations in ms, names snake_case."""
        resource = accepted(
            policy(
                loadBalancer={"type": "ConsistentHash", "hashOn": {"header": "X-User"}},
                connectionPool={"maxConnections": 100, "maxPendingRequests": 50,
                                "maxRequestsPerConnection": 10},
                outlierDetection={"consecutive5xx": 5, "consecutiveGatewayErrors": 5,
                                  "consecutiveConnectFailures": 3, "interval": "10s",
                                  "baseEjectionTime": "30s", "maxEjectionPercent": 50},
                timeout="15s",
                retry={"attempts": 3, "on": ["unavailable"]},
                retryBudget={"ratio": 0.1, "minRetriesPerSecond": 5, "window": "5s"},
                rateLimit={"requestsPerSecond": 100, "burst": 200},
            )
        )
        assert isinstance(resource, TrafficPolicy)
        assert resource.policy_snapshot() == {
            "load_balancer": {"type": "ConsistentHash", "hash_header": "x-user",
                              "hash_cookie": None},
            "connection_pool": {"max_connections": 100, "max_pending": 50,
                                "max_requests_per_connection": 10},
            "outlier": {"consecutive_5xx": 5, "consecutive_gateway_errors": 5,
                        "consecutive_connect_failures": 3, "interval_ms": 10000,
                        "base_ejection_ms": 30000, "max_ejection_ms": 300000,
                        "max_ejection_percent": 50.0},
            "timeout_ms": 15000,
            "retry": {"attempts": 3, "on": ["unavailable"], "status_codes": [],
                      "per_try_timeout_ms": None, "backoff_base_ms": 25, "backoff_max_ms": 250,
                      "methods": ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"],
                      "max_body_bytes": 65536},
            "retry_budget": {"ratio": 0.1, "min_per_second": 5, "window_ms": 5000},
        }  # fmt: skip
        assert resource.rate_limit_snapshot() == {
            "requests_per_second": 100,
            "burst": 200,
            "per_identity": False,
        }

    def test_defaults_without_a_policy(self) -> None:
        """No TrafficPolicy: PeakEWMA, unlimited pool, no outlier/timeout/retry, budget 20%."""
        assert default_policy_snapshot() == {
            "load_balancer": {"type": "PeakEWMA", "hash_header": None, "hash_cookie": None},
            "connection_pool": {"max_connections": 0, "max_pending": 0,
                                "max_requests_per_connection": 0},
            "outlier": None,
            "timeout_ms": None,
            "retry": None,
            "retry_budget": {"ratio": 0.2, "min_per_second": 10, "window_ms": 10000},
        }  # fmt: skip

    def test_policy_with_only_a_service_equals_the_defaults(self) -> None:
        """An empty TrafficPolicy compiles to the same policy as none at all."""
        resource = accepted(policy())
        assert isinstance(resource, TrafficPolicy)
        assert resource.policy_snapshot() == default_policy_snapshot()
        assert resource.rate_limit_snapshot() is None

    def test_outlier_defaults(self) -> None:
        """An empty outlierDetection: 5 consecutive 5xx, 10s interval, 30s..300s, 10 %."""
        resource = accepted(policy(outlierDetection={}))
        assert isinstance(resource, TrafficPolicy)
        assert resource.policy_snapshot()["outlier"] == {
            "consecutive_5xx": 5,
            "consecutive_gateway_errors": 0,
            "consecutive_connect_failures": 0,
            "interval_ms": 10000,
            "base_ejection_ms": 30000,
            "max_ejection_ms": 300000,
            "max_ejection_percent": 10.0,
        }

    def test_burst_defaults_to_one_second_of_requests(self) -> None:
        """Without burst, the bucket holds one second's worth of requests (at least 1)."""
        resource = accepted(policy(rateLimit={"requestsPerSecond": 2.5, "perIdentity": True}))
        assert isinstance(resource, TrafficPolicy)
        assert resource.rate_limit_snapshot() == {
            "requests_per_second": 2.5,
            "burst": 3,
            "per_identity": True,
        }

    def test_service_may_name_another_namespace(self) -> None:
        """spec.service 'name.namespace' targets that namespace's service."""
        resource = accepted(policy(service="catalog.shop"))
        assert isinstance(resource, TrafficPolicy)
        assert resource.service_key == ("shop", "catalog")
