"""Passive health checking of a service's endpoints: eject the ones that keep failing.

Semantics (Envoy's outlier detection with local-origin errors not split from HTTP ones):

- The caller reports each outcome with ``record(key, outcome, now)``: ``ok`` (any response
  that is not a 5xx), ``error-5xx`` (a 5xx other than 502/503/504), ``gateway-error`` (502,
  503, 504, or no response because the connection was reset or timed out) or
  ``connect-failure`` (no connection could be made). ``classify`` maps a status/cause to one.
- Three consecutive-failure counters per endpoint, each ejecting when it reaches its threshold
  (0 disables that counter):

  ======================  =====================================  ==========================
  counter                 incremented by                         reset to 0 by
  ======================  =====================================  ==========================
  consecutive 5xx         error-5xx, gateway-error,              ok
                          connect-failure
  consecutive gateway     gateway-error, connect-failure         ok, error-5xx
  consecutive connect     connect-failure                        ok, error-5xx, gateway-error
  ======================  =====================================  ==========================

  (A response of any status proves the connection works, so it resets the connect counter; a
  non-gateway 5xx breaks a run of gateway errors, as in Envoy.)
- An ejection lasts ``base_ejection * n`` seconds, ``n`` being how many times the endpoint has
  been ejected (this one included), capped at ``max(max_ejection, base_ejection)``. ``n`` drops
  by one for every full ``interval`` the endpoint spent back in service before its next
  ejection (Envoy decrements it at each healthy interval). Return is exact: an endpoint is back
  as soon as ``now`` reaches the end of its ejection (no sweep timer is needed).
- At most ``max_ejection_percent`` of the endpoints given to ``set_endpoints`` are ejected at
  once, but at least one may be (as Envoy, when the percentage rounds down to zero) and never
  all of them: one endpoint always stays. A percent of 0 disables ejection. An ejection refused
  by that cap is retried on the endpoint's next failure, since its counter stays at or above
  the threshold.
- Counters restart from 0 when an endpoint is ejected; outcomes recorded while it is ejected
  (late responses) are ignored.

Endpoint keys are any hashable (an address tuple, an ``EndpointAddr``). Recording for a key not
yet known adds it to the endpoint set.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from typing import Any

from gossamer.proxy.resilience.fields import number, obj, opt_int
from gossamer.proxy.snapshot.errors import SnapshotError

__all__ = [
    "CONNECT_FAILURE",
    "ERROR_5XX",
    "GATEWAY_ERROR",
    "OK",
    "OUTCOMES",
    "OutlierDetector",
    "classify",
]

OK = "ok"
ERROR_5XX = "error-5xx"
GATEWAY_ERROR = "gateway-error"
CONNECT_FAILURE = "connect-failure"
OUTCOMES: frozenset[str] = frozenset({OK, ERROR_5XX, GATEWAY_ERROR, CONNECT_FAILURE})


def classify(status: int | None, cause: str | None = None) -> str:
    """The outcome for a response status, or for a failure cause when there is no response
    (``connect-failed`` → connect-failure; ``upstream-reset``/``upstream-timeout`` →
    gateway-error)."""
    if status is None:
        return CONNECT_FAILURE if cause == "connect-failed" else GATEWAY_ERROR
    if 502 <= status <= 504:
        return GATEWAY_ERROR
    return ERROR_5XX if 500 <= status <= 599 else OK


class _Endpoint:
    __slots__ = ("connect", "five", "gateway", "times", "until")

    def __init__(self) -> None:
        self.five = 0
        self.gateway = 0
        self.connect = 0
        self.times = 0  # ejections so far (decays with healthy intervals)
        self.until = -math.inf  # ejected while now < until


class OutlierDetector:
    """Ejection state of the endpoints of one service; see the module docstring."""

    def __init__(
        self,
        consecutive_5xx: int = 5,
        consecutive_gateway_errors: int = 5,
        consecutive_connect_failures: int = 5,
        interval: float = 10.0,
        base_ejection: float = 30.0,
        max_ejection_percent: float = 10.0,
        max_ejection: float = 300.0,
    ) -> None:
        if min(consecutive_5xx, consecutive_gateway_errors, consecutive_connect_failures) < 0:
            raise ValueError("thresholds must be >= 0")
        if interval < 0 or base_ejection < 0 or max_ejection < 0:
            raise ValueError("durations must be >= 0")
        if not 0 <= max_ejection_percent <= 100:
            raise ValueError("max_ejection_percent must be in [0, 100]")
        self.consecutive_5xx = consecutive_5xx
        self.consecutive_gateway_errors = consecutive_gateway_errors
        self.consecutive_connect_failures = consecutive_connect_failures
        self.interval = interval
        self.base_ejection = base_ejection
        self.max_ejection = max(max_ejection, base_ejection)
        self.max_ejection_percent = max_ejection_percent
        self._endpoints: dict[Hashable, _Endpoint] = {}
        self._ejected: dict[Hashable, _Endpoint] = {}

    @classmethod
    def from_snapshot(cls, d: Any, where: str) -> OutlierDetector:
        """Compile the snapshot's ``outlier`` object: ``consecutive_5xx``,
        ``consecutive_gateway_errors``, ``consecutive_connect_failures`` (counts, 0 = off),
        ``interval_ms``, ``base_ejection_ms``, ``max_ejection_ms`` (default 300000),
        ``max_ejection_percent``."""
        d = obj(d, where)
        base_ms = opt_int(d, "base_ejection_ms", where, default=30_000)
        interval_ms = opt_int(d, "interval_ms", where, default=10_000)
        if interval_ms < 1:
            raise SnapshotError(f"{where}.interval_ms: must be at least 1")
        return cls(
            consecutive_5xx=opt_int(d, "consecutive_5xx", where, default=5),
            consecutive_gateway_errors=opt_int(d, "consecutive_gateway_errors", where, default=5),
            consecutive_connect_failures=opt_int(
                d, "consecutive_connect_failures", where, default=5
            ),
            interval=interval_ms / 1000.0,
            base_ejection=base_ms / 1000.0,
            max_ejection_percent=number(
                d, "max_ejection_percent", where, default=10.0, maximum=100.0
            ),
            max_ejection=opt_int(d, "max_ejection_ms", where, default=300_000) / 1000.0,
        )

    def set_endpoints(self, keys: Iterable[Hashable]) -> None:
        """The current endpoints; state is kept for those still present, dropped for others."""
        old = self._endpoints
        self._endpoints = {key: old.get(key) or _Endpoint() for key in keys}
        self._ejected = {k: ep for k, ep in self._ejected.items() if k in self._endpoints}

    def adopt(self, previous: OutlierDetector) -> None:
        """Take over the endpoint state of the detector this one replaces (config update)."""
        self._endpoints = dict(previous._endpoints)
        self._ejected = dict(previous._ejected)

    def record(self, key: Hashable, outcome: str, now: float) -> bool:
        """Count one outcome for an endpoint; True when it got the endpoint ejected."""
        ep = self._endpoints.get(key)
        if ep is None:
            ep = self._endpoints[key] = _Endpoint()
        if now < ep.until:
            return False
        if outcome == OK:
            ep.five = ep.gateway = ep.connect = 0
            return False
        if outcome == ERROR_5XX:
            ep.five += 1
            ep.gateway = ep.connect = 0
        elif outcome == GATEWAY_ERROR:
            ep.five += 1
            ep.gateway += 1
            ep.connect = 0
        elif outcome == CONNECT_FAILURE:
            ep.five += 1
            ep.gateway += 1
            ep.connect += 1
        else:
            raise ValueError(f"unknown outcome {outcome!r}")
        if (
            (self.consecutive_5xx and ep.five >= self.consecutive_5xx)
            or (self.consecutive_gateway_errors and ep.gateway >= self.consecutive_gateway_errors)
            or (
                self.consecutive_connect_failures
                and ep.connect >= self.consecutive_connect_failures
            )
        ):
            return self._eject(key, ep, now)
        return False

    def _limit(self) -> int:
        n = len(self._endpoints)
        if self.max_ejection_percent <= 0 or n < 2:
            return 0
        return min(n - 1, max(1, math.floor(n * self.max_ejection_percent / 100.0)))

    def _eject(self, key: Hashable, ep: _Endpoint, now: float) -> bool:
        if len(self.ejected(now)) >= self._limit():
            return False
        if ep.times and self.interval > 0 and ep.until > -math.inf:
            healthy_intervals = int(max(now - ep.until, 0.0) // self.interval)
            ep.times = max(ep.times - healthy_intervals, 0)
        ep.times += 1
        ep.until = now + min(self.base_ejection * ep.times, self.max_ejection)
        ep.five = ep.gateway = ep.connect = 0
        self._ejected[key] = ep
        return True

    def is_ejected(self, key: Hashable, now: float) -> bool:
        """Whether the endpoint is out of rotation at ``now``."""
        ep = self._endpoints.get(key)
        return ep is not None and now < ep.until

    def ejection_count(self, key: Hashable) -> int:
        """How many ejections currently weigh on the endpoint's next ejection time."""
        ep = self._endpoints.get(key)
        return ep.times if ep is not None else 0

    def ejected(self, now: float) -> set[Hashable]:
        """The endpoints ejected at ``now`` (those whose time is over are forgotten here)."""
        ejected = self._ejected
        for key in [k for k, ep in ejected.items() if now >= ep.until]:
            del ejected[key]
        return set(ejected)
