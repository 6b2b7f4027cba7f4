"""The ``TrafficPolicy`` kind: how callers treat one service (docs/internals.md §8).

Load balancing, connection limits, outlier detection, default timeout and retry, the retry
budget (enforced by calling sidecars), and a local rate limit (enforced by the service's own
inbound sidecars). :func:`policy_snapshot` gives the snapshot form, with the defaults when a
service has no TrafficPolicy.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field

from gossamer.config.base import Resource, SpecModel
from gossamer.config.duration import duration_ms, parse_duration
from gossamer.config.traffic import (
    HeaderName,
    Percent,
    PositiveDuration,
    RetryPolicy,
    ServiceRef,
    service_key,
)
from gossamer.snapshot_schema import (
    ConnectionPoolSnapshot,
    LoadBalancerSnapshot,
    OutlierSnapshot,
    PolicySnapshot,
    RateLimitSnapshot,
    RetryBudgetSnapshot,
)

__all__ = [
    "ConnectionPool",
    "HashOn",
    "LoadBalancer",
    "OutlierDetection",
    "RateLimit",
    "RetryBudget",
    "TrafficPolicy",
    "TrafficPolicySpec",
    "default_policy_snapshot",
]

_COOKIE_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,256}$")
MAX_COUNT = 1_000_000


def _check_cookie_name(value: str) -> str:
    if not _COOKIE_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid cookie name")
    return value


def _check_window(value: str) -> str:
    if not 1 <= parse_duration(value).total_seconds() <= 60:
        raise ValueError(f"the retry budget window {value!r} must be between 1s and 60s")
    return value


Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]


class HashOn(SpecModel):
    """What ConsistentHash hashes: one request header or one cookie."""

    header: HeaderName | None = None
    cookie: Annotated[str, AfterValidator(_check_cookie_name)] | None = None


class LoadBalancer(SpecModel):
    """``loadBalancer``: peak-EWMA power-of-two-choices unless told otherwise."""

    type: Literal["PeakEWMA", "RoundRobin", "LeastRequest", "ConsistentHash"] = "PeakEWMA"
    hash_on: HashOn | None = None

    def to_snapshot(self) -> LoadBalancerSnapshot:
        hash_on = self.hash_on
        return {
            "type": self.type,
            "hash_header": (
                hash_on.header.lower() if hash_on is not None and hash_on.header else None
            ),
            "hash_cookie": hash_on.cookie if hash_on is not None else None,
        }


class ConnectionPool(SpecModel):
    """Limits per calling sidecar and service; 0 means unlimited. Overflow fails fast (503)."""

    max_connections: Count = 0
    max_pending_requests: Count = 0
    max_requests_per_connection: Count = 0

    def to_snapshot(self) -> ConnectionPoolSnapshot:
        return {
            "max_connections": self.max_connections,
            "max_pending": self.max_pending_requests,
            "max_requests_per_connection": self.max_requests_per_connection,
        }


class OutlierDetection(SpecModel):
    """Eject an endpoint after consecutive errors (0 turns a counter off).

    5xx counts gateway errors and connect failures too; gateway errors count connect failures.
    Each ejection of the same endpoint lasts ``baseEjectionTime`` longer than the previous one,
    up to ``maxEjectionTime``.
    """

    consecutive_5xx: Count = Field(default=5, alias="consecutive5xx")
    consecutive_gateway_errors: Count = 0
    consecutive_connect_failures: Count = 0
    interval: PositiveDuration = "10s"
    base_ejection_time: PositiveDuration = "30s"
    max_ejection_time: PositiveDuration = "300s"
    max_ejection_percent: Percent = 10.0

    def to_snapshot(self) -> OutlierSnapshot:
        return {
            "consecutive_5xx": self.consecutive_5xx,
            "consecutive_gateway_errors": self.consecutive_gateway_errors,
            "consecutive_connect_failures": self.consecutive_connect_failures,
            "interval_ms": duration_ms(self.interval),
            "base_ejection_ms": duration_ms(self.base_ejection_time),
            "max_ejection_ms": duration_ms(self.max_ejection_time),
            "max_ejection_percent": self.max_ejection_percent,
        }


class RetryBudget(SpecModel):
    """Retries allowed: ``ratio`` of the requests in ``window`` plus ``minRetriesPerSecond``."""

    ratio: float = Field(default=0.2, ge=0, le=10)
    min_retries_per_second: Count = 10
    window: Annotated[str, AfterValidator(_check_window)] = "10s"

    def to_snapshot(self) -> RetryBudgetSnapshot:
        return {
            "ratio": self.ratio,
            "min_per_second": self.min_retries_per_second,
            "window_ms": duration_ms(self.window),
        }


class RateLimit(SpecModel):
    """A token bucket at the service's own sidecars: 429 with ``retry-after`` when empty."""

    requests_per_second: float = Field(gt=0, le=MAX_COUNT)
    burst: int | None = Field(default=None, ge=1, le=MAX_COUNT)  # unset: one second's worth
    per_identity: bool = False

    def to_snapshot(self) -> RateLimitSnapshot:
        rate = self.requests_per_second
        return {
            "requests_per_second": rate,
            "burst": self.burst if self.burst is not None else max(1, math.ceil(rate)),
            "per_identity": self.per_identity,
        }


class TrafficPolicySpec(SpecModel):
    """``spec`` of a TrafficPolicy."""

    service: ServiceRef
    load_balancer: LoadBalancer = Field(default_factory=LoadBalancer)
    connection_pool: ConnectionPool = Field(default_factory=ConnectionPool)
    outlier_detection: OutlierDetection | None = None
    timeout: PositiveDuration | None = None
    retry: RetryPolicy | None = None
    retry_budget: RetryBudget = Field(default_factory=RetryBudget)
    rate_limit: RateLimit | None = None


def default_policy_snapshot() -> PolicySnapshot:
    """The policy of a service without a TrafficPolicy."""
    return {
        "load_balancer": LoadBalancer().to_snapshot(),
        "connection_pool": ConnectionPool().to_snapshot(),
        "outlier": None,
        "timeout_ms": None,
        "retry": None,
        "retry_budget": RetryBudget().to_snapshot(),
    }


class TrafficPolicy(Resource):
    """Policy for calls to one service (one per service: a second is refused at apply)."""

    KIND: ClassVar[str] = "TrafficPolicy"
    PLURAL: ClassVar[str] = "trafficpolicies"

    kind: Literal["TrafficPolicy"]
    spec: TrafficPolicySpec

    @property
    def service_key(self) -> tuple[str, str]:
        """``(namespace, name)`` of the service this policy is for."""
        return service_key(self.spec.service, self.metadata.namespace)

    def semantic_problems(self) -> list[tuple[str, str]]:
        spec = self.spec
        out: list[tuple[str, str]] = []
        balancer = spec.load_balancer
        if balancer.type == "ConsistentHash" and balancer.hash_on is None:
            out.append(("spec.loadBalancer.hashOn", "ConsistentHash needs hashOn"))
        if balancer.hash_on is not None:
            if balancer.type != "ConsistentHash":
                out.append(("spec.loadBalancer.hashOn", "hashOn only applies to ConsistentHash"))
            elif (balancer.hash_on.header is None) == (balancer.hash_on.cookie is None):
                out.append(("spec.loadBalancer.hashOn", "hashOn needs one of header or cookie"))
        outlier = spec.outlier_detection
        if outlier is not None and not (
            outlier.consecutive_5xx
            or outlier.consecutive_gateway_errors
            or outlier.consecutive_connect_failures
        ):
            out.append(("spec.outlierDetection", "every error threshold is 0: nothing would eject"))
        if outlier is not None and parse_duration(outlier.max_ejection_time) < parse_duration(
            outlier.base_ejection_time
        ):
            out.append(
                (
                    "spec.outlierDetection.maxEjectionTime",
                    f"maxEjectionTime {outlier.max_ejection_time} is shorter than "
                    f"baseEjectionTime {outlier.base_ejection_time}",
                )
            )
        if spec.retry is not None:
            out += spec.retry.problems("spec.retry", spec.timeout)
        return out

    def policy_snapshot(self) -> PolicySnapshot:
        """The ``policy`` of the service's snapshot entry (the rate limit goes to inbound)."""
        spec = self.spec
        return {
            "load_balancer": spec.load_balancer.to_snapshot(),
            "connection_pool": spec.connection_pool.to_snapshot(),
            "outlier": (
                spec.outlier_detection.to_snapshot() if spec.outlier_detection is not None else None
            ),
            "timeout_ms": duration_ms(spec.timeout) if spec.timeout is not None else None,
            "retry": spec.retry.to_snapshot() if spec.retry is not None else None,
            "retry_budget": spec.retry_budget.to_snapshot(),
        }

    def rate_limit_snapshot(self) -> RateLimitSnapshot | None:
        """``inbound.rate_limit`` for the service's own sidecars, or None."""
        limit = self.spec.rate_limit
        return limit.to_snapshot() if limit is not None else None
