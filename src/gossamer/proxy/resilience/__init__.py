"""Sans-IO resilience of the data path (docs/internals.md §8): retry policies and budgets,
connection limits, outlier ejection and local rate limits. Everything here takes time as an
explicit ``now`` (monotonic seconds) and is built once per snapshot with
``from_snapshot(d, where)``, raising ``SnapshotError`` naming the field.
"""

from gossamer.proxy.resilience.budget import RetryBudget
from gossamer.proxy.resilience.limits import ConnectionLimits
from gossamer.proxy.resilience.outlier import OutlierDetector, classify
from gossamer.proxy.resilience.ratelimit import LocalRateLimiter
from gossamer.proxy.resilience.retry import RetryPolicy

__all__ = [
    "ConnectionLimits",
    "LocalRateLimiter",
    "OutlierDetector",
    "RetryBudget",
    "RetryPolicy",
    "classify",
]
