"""A destination service's traffic policy, compiled once per snapshot (docs/internals.md §8).

``ServicePolicy`` gathers what a ``TrafficPolicy`` says about calling one service: the load
balancer, connection limits (circuit breaking), outlier detection, default timeout and retry
policy, and the retry budget. State that must survive a config update (outlier ejections,
budget counts) is carried over from the policy it replaces.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gossamer.proxy.resilience.budget import RetryBudget
from gossamer.proxy.resilience.fields import obj, opt_obj
from gossamer.proxy.resilience.limits import UNLIMITED, ConnectionLimits
from gossamer.proxy.resilience.outlier import OutlierDetector
from gossamer.proxy.resilience.retry import RetryPolicy
from gossamer.proxy.snapshot.errors import SnapshotError

__all__ = ["LB_TYPES", "ServicePolicy"]

LB_TYPES = frozenset({"PeakEWMA", "RoundRobin", "LeastRequest", "ConsistentHash"})


class ServicePolicy:
    __slots__ = (
        "budget",
        "hash_cookie",
        "hash_header",
        "lb_type",
        "limits",
        "outlier",
        "retry",
        "timeout",
    )

    def __init__(self) -> None:
        self.lb_type = "PeakEWMA"
        self.hash_header: bytes | None = None
        self.hash_cookie: bytes | None = None
        self.limits: ConnectionLimits = UNLIMITED
        self.outlier: OutlierDetector | None = None
        self.timeout: float | None = None
        self.retry: RetryPolicy | None = None
        self.budget = RetryBudget()

    @classmethod
    def from_snapshot(
        cls, raw: Any, where: str, previous: ServicePolicy | None = None
    ) -> ServicePolicy:
        """Compile the snapshot's ``policy`` object (None gives the defaults)."""
        policy = cls()
        if raw is not None:
            d = obj(raw, where)
            lb = opt_obj(d, "load_balancer", where)
            if lb is not None:
                lb_type = lb.get("type", "PeakEWMA")
                if lb_type not in LB_TYPES:
                    raise SnapshotError(
                        f"{where}.load_balancer.type: expected one of {sorted(LB_TYPES)}, "
                        f"got {lb_type!r}"
                    )
                policy.lb_type = lb_type
                policy.hash_header = _opt_lower(lb, "hash_header", f"{where}.load_balancer")
                policy.hash_cookie = _opt_bytes(lb, "hash_cookie", f"{where}.load_balancer")
                if lb_type == "ConsistentHash" and not (policy.hash_header or policy.hash_cookie):
                    raise SnapshotError(
                        f"{where}.load_balancer: ConsistentHash needs hash_header or hash_cookie"
                    )
            pool = opt_obj(d, "connection_pool", where)
            if pool is not None:
                policy.limits = ConnectionLimits.from_snapshot(pool, f"{where}.connection_pool")
            outlier = opt_obj(d, "outlier", where)
            if outlier is not None:
                policy.outlier = OutlierDetector.from_snapshot(outlier, f"{where}.outlier")
            timeout_ms = d.get("timeout_ms")
            if timeout_ms is not None:
                if type(timeout_ms) is not int or timeout_ms < 1:
                    raise SnapshotError(f"{where}.timeout_ms: expected a positive integer")
                policy.timeout = timeout_ms / 1000.0
            retry = opt_obj(d, "retry", where)
            if retry is not None:
                policy.retry = RetryPolicy.from_snapshot(retry, f"{where}.retry")
            budget = opt_obj(d, "retry_budget", where)
            if budget is not None:
                policy.budget = RetryBudget.from_snapshot(budget, f"{where}.retry_budget")
        if previous is not None:
            policy.budget.adopt(previous.budget)
            if policy.outlier is not None and previous.outlier is not None:
                policy.outlier.adopt(previous.outlier)
        return policy


def _opt_bytes(d: Mapping[str, Any], field: str, where: str) -> bytes | None:
    value = d.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SnapshotError(f"{where}.{field}: expected a non-empty string")
    return value.encode("latin-1")


def _opt_lower(d: Mapping[str, Any], field: str, where: str) -> bytes | None:
    value = _opt_bytes(d, field, where)
    return value.lower() if value is not None else None
