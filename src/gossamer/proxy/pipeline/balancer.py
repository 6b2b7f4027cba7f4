"""Concrete stage of the outbound path: choose one endpoint of a service for a request.

Default: power-of-two-choices over peak-EWMA latency (the cost of an endpoint is its
peak-sensitive moving average of response latency, scaled by its requests in flight);
round-robin is selectable. Endpoint load state survives config updates, because endpoints are
reused by address when a new snapshot arrives.

For traffic policies (docs/internals.md §8) there are also least-request (power of two choices
on requests in flight) and consistent hashing (a ring of virtual nodes, so a key keeps its
endpoint while other endpoints come and go).
"""

from __future__ import annotations

import functools
import math
import random
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Balancer",
    "ConsistentHashBalancer",
    "EndpointAddr",
    "EndpointState",
    "LeastRequestBalancer",
    "PeakEwmaBalancer",
    "RoundRobinBalancer",
    "hash_key64",
]

DECAY_NS = 10_000_000_000  # 10 s: how fast the average forgets
DEFAULT_RTT_NS = 1_000_000  # 1 ms: an endpoint with no history is assumed neither fast nor slow
FAILURE_PENALTY_NS = 1_000_000_000  # a connect failure counts as a 1 s response


@dataclass(frozen=True, slots=True)
class EndpointAddr:
    """Where an endpoint listens (for mesh endpoints: the destination sidecar's inbound port)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class EndpointState:
    """One endpoint and its load: requests in flight and peak-EWMA latency."""

    __slots__ = ("addr", "ewma_ns", "labels", "last_ns", "pending", "pool_key")

    def __init__(self, addr: EndpointAddr, labels: Mapping[str, str]) -> None:
        self.addr = addr
        self.pool_key = (addr.host, addr.port)  # the upstream pool's key for its connections
        self.labels = dict(labels)
        self.pending = 0
        self.ewma_ns = float(DEFAULT_RTT_NS)
        self.last_ns = time.monotonic_ns()

    def cost(self, now_ns: int) -> float:
        # Decay toward zero with time since the last observation, so an endpoint penalised long
        # ago gets traffic again; scale by load so a busy endpoint looks slower.
        elapsed = now_ns - self.last_ns
        ewma = self.ewma_ns * math.exp(-elapsed / DECAY_NS) if elapsed > 0 else self.ewma_ns
        return max(ewma, 1.0) * (self.pending + 1)

    def observe(self, rtt_ns: int, now_ns: int) -> None:
        """Fold one response latency into the average (peaks are taken at once)."""
        ewma = self.ewma_ns
        if rtt_ns > ewma:
            self.ewma_ns = float(rtt_ns)
        else:
            elapsed = now_ns - self.last_ns
            if elapsed > 0:
                # weight = exp(-x); for the small x of a busy endpoint (responses less than
                # 10 ms apart) 1 - x is within x * x / 2 < 5e-7 of it, without the call
                x = elapsed / DECAY_NS
                weight = 1.0 - x if x < 1e-3 else math.exp(-x)
                self.ewma_ns = ewma * weight + rtt_ns * (1.0 - weight)
        self.last_ns = now_ns

    def penalise(self, now_ns: int) -> None:
        self.observe(FAILURE_PENALTY_NS, now_ns)


class Balancer:
    """Base: holds the endpoints of one service (or subset)."""

    def __init__(self, endpoints: Sequence[EndpointState]) -> None:
        self.endpoints: tuple[EndpointState, ...] = tuple(endpoints)

    def pick(self) -> EndpointState | None:
        raise TypeError("use a concrete balancer")


def _two_distinct(
    rng: random.Random, endpoints: Sequence[EndpointState]
) -> tuple[EndpointState, EndpointState]:
    """Two different endpoints drawn uniformly (``endpoints`` holds at least two)."""
    n = len(endpoints)
    i = int(rng.random() * n)
    j = int(rng.random() * (n - 1))
    if j >= i:
        j += 1
    return endpoints[i], endpoints[j]


class PeakEwmaBalancer(Balancer):
    """Power of two choices by peak-EWMA cost."""

    def __init__(self, endpoints: Sequence[EndpointState], rng: random.Random | None = None):
        super().__init__(endpoints)
        self._rng = rng or random.Random()

    def pick(self) -> EndpointState | None:
        endpoints = self.endpoints
        if len(endpoints) < 2:
            return endpoints[0] if endpoints else None
        a, b = _two_distinct(self._rng, endpoints)
        now = time.monotonic_ns()
        return a if a.cost(now) <= b.cost(now) else b


class RoundRobinBalancer(Balancer):
    def __init__(self, endpoints: Sequence[EndpointState]) -> None:
        super().__init__(endpoints)
        self._next = 0

    def pick(self) -> EndpointState | None:
        endpoints = self.endpoints
        if not endpoints:
            return None
        i = self._next % len(endpoints)
        self._next = i + 1
        return endpoints[i]


class LeastRequestBalancer(Balancer):
    """Power of two choices on requests in flight (``EndpointState.pending``); ties go to the
    first of the two random draws."""

    def __init__(self, endpoints: Sequence[EndpointState], rng: random.Random | None = None):
        super().__init__(endpoints)
        self._rng = rng or random.Random()

    def pick(self) -> EndpointState | None:
        endpoints = self.endpoints
        if len(endpoints) < 2:
            return endpoints[0] if endpoints else None
        a, b = _two_distinct(self._rng, endpoints)
        return a if a.pending <= b.pending else b


VNODES = 160  # ring points per endpoint: keeps the load spread within a few percent


def hash_key64(data: bytes) -> int:
    """A stable 64-bit hash (the same in every process, unlike ``hash``)."""
    from hashlib import blake2b  # only consistent-hash balancing needs it (memory at idle)

    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


@functools.lru_cache(maxsize=4096)
def _ring_points(address: str, vnodes: int) -> tuple[int, ...]:
    """An endpoint's ring positions (cached: rings are rebuilt on every endpoint change)."""
    prefix = address.encode()
    return tuple(hash_key64(b"%b#%d" % (prefix, v)) for v in range(vnodes))


class ConsistentHashBalancer(Balancer):
    """A hash ring with ``vnodes`` points per endpoint, placed by a hash of its address.

    ``pick_for(key)`` takes the first point at or after the key's hash (wrapping around). A key
    only moves when its endpoint leaves (to the next endpoint on the ring) or when a new
    endpoint takes over its arc, so caches behind the endpoints stay warm. With ``healthy``,
    endpoints it rejects are skipped along the ring; when none passes, the key's own endpoint
    is returned (better some traffic than none, as Envoy's panic mode). ``pick()`` (no key,
    e.g. the hash header is absent) chooses at random.
    """

    def __init__(
        self,
        endpoints: Sequence[EndpointState],
        rng: random.Random | None = None,
        vnodes: int = VNODES,
    ) -> None:
        super().__init__(endpoints)
        self._rng = rng or random.Random()
        # Sorted by (hash, address, position) so ties never compare endpoint objects.
        points = sorted(
            (point, address, i)
            for i, ep in enumerate(self.endpoints)
            for address in (str(ep.addr),)
            for point in _ring_points(address, max(vnodes, 1))
        )
        self._points: list[int] = [point for point, _, _ in points]
        self._owners: tuple[EndpointState, ...] = tuple(self.endpoints[i] for _, _, i in points)

    def pick(self) -> EndpointState | None:
        endpoints = self.endpoints
        return endpoints[int(self._rng.random() * len(endpoints))] if endpoints else None

    def pick_for(
        self, hash_key: bytes, healthy: Callable[[EndpointState], bool] | None = None
    ) -> EndpointState | None:
        """The endpoint owning ``hash_key`` (the next healthy one along the ring)."""
        owners = self._owners
        n = len(owners)
        if not n:
            return None
        i = bisect_left(self._points, hash_key64(hash_key))
        if i == n:
            i = 0
        first = owners[i]
        if healthy is None or healthy(first):
            return first
        for step in range(1, n):
            candidate = owners[(i + step) % n]
            if candidate is not first and healthy(candidate):
                return candidate
        return first
