"""Endpoint choice: peak-EWMA power-of-two-choices and round robin, with a controlled clock."""

from __future__ import annotations

import random
import types
from collections import Counter

import pytest

from gossamer.proxy.pipeline import balancer as balance
from gossamer.proxy.pipeline.balancer import (
    DEFAULT_RTT_NS,
    FAILURE_PENALTY_NS,
    EndpointAddr,
    EndpointState,
    PeakEwmaBalancer,
    RoundRobinBalancer,
)

MS = 1_000_000
S = 1_000_000_000
PICKS = 1000


class Clock:
    """A monotonic clock the test moves by hand, installed in place of ``balance.time``."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def monotonic_ns(self) -> int:
        return self.now_ns


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(1_000 * S)
    monkeypatch.setattr(balance, "time", types.SimpleNamespace(monotonic_ns=fake.monotonic_ns))
    return fake


def endpoints(n: int) -> list[EndpointState]:
    return [EndpointState(EndpointAddr("127.0.0.1", 40000 + i), {}) for i in range(n)]


def count_picks(balancer: PeakEwmaBalancer | RoundRobinBalancer) -> Counter[int]:
    picks: Counter[int] = Counter()
    for _ in range(PICKS):
        chosen = balancer.pick()
        assert chosen is not None
        picks[chosen.addr.port] += 1
    return picks


class TestPeakEwma:
    def test_slow_endpoint_gets_almost_no_traffic(self, clock: Clock) -> None:
        """An endpoint 500x slower than its peers is (almost) never picked over 1000 picks."""
        eps = endpoints(3)
        for ep in eps:
            ep.observe(1 * MS, clock.now_ns)
        eps[2].observe(500 * MS, clock.now_ns)
        picks = count_picks(PeakEwmaBalancer(eps, random.Random(7)))
        assert picks[40002] <= PICKS // 100
        assert picks[40000] + picks[40001] >= PICKS * 99 // 100
        assert min(picks[40000], picks[40001]) > PICKS // 5  # the fast ones share the load

    def test_busy_endpoint_gets_almost_no_traffic(self, clock: Clock) -> None:
        """An endpoint with many requests in flight is (almost) never picked."""
        eps = endpoints(3)
        eps[0].pending = 50
        picks = count_picks(PeakEwmaBalancer(eps, random.Random(11)))
        assert picks[40000] <= PICKS // 100

    def test_equal_endpoints_share_traffic(self, clock: Clock) -> None:
        """Endpoints with the same cost all get a fair share."""
        eps = endpoints(4)
        picks = count_picks(PeakEwmaBalancer(eps, random.Random(3)))
        assert set(picks) == {40000, 40001, 40002, 40003}
        assert min(picks.values()) > PICKS // 8

    def test_penalised_endpoint_recovers_as_time_passes(self, clock: Clock) -> None:
        """A connect failure shuts an endpoint out at first; a minute or two later it is back."""
        eps = endpoints(2)
        eps[0].penalise(clock.now_ns)
        eps[1].observe(2 * MS, clock.now_ns)
        rng = random.Random(5)
        clock.now_ns += 1 * S
        eps[1].observe(2 * MS, clock.now_ns)  # the healthy peer keeps answering in 2 ms
        assert count_picks(PeakEwmaBalancer(eps, rng))[40000] == 0
        clock.now_ns += 120 * S
        eps[1].observe(2 * MS, clock.now_ns)
        assert count_picks(PeakEwmaBalancer(eps, rng))[40000] > PICKS // 4

    def test_single_endpoint_is_always_picked(self, clock: Clock) -> None:
        """With one endpoint, that endpoint is picked, however slow or busy."""
        (only,) = endpoints(1)
        only.penalise(clock.now_ns)
        only.pending = 99
        balancer = PeakEwmaBalancer([only], random.Random(1))
        assert all(balancer.pick() is only for _ in range(10))

    def test_no_endpoints_gives_none(self) -> None:
        """With no endpoints, pick returns None."""
        assert PeakEwmaBalancer([], random.Random(1)).pick() is None


class TestEndpointState:
    def test_new_endpoint_starts_at_default_latency(self, clock: Clock) -> None:
        """A fresh endpoint has no load and the default latency estimate."""
        (ep,) = endpoints(1)
        assert (ep.pending, ep.ewma_ns, ep.last_ns) == (0, float(DEFAULT_RTT_NS), clock.now_ns)
        assert ep.cost(clock.now_ns) == float(DEFAULT_RTT_NS)

    def test_peaks_are_taken_at_once(self, clock: Clock) -> None:
        """A latency above the average replaces it immediately."""
        (ep,) = endpoints(1)
        ep.observe(300 * MS, clock.now_ns + 1)
        assert ep.ewma_ns == 300 * MS

    def test_penalty_counts_as_a_one_second_response(self, clock: Clock) -> None:
        """``penalise`` folds in a one-second latency."""
        (ep,) = endpoints(1)
        ep.penalise(clock.now_ns)
        assert ep.ewma_ns == FAILURE_PENALTY_NS

    def test_lower_latencies_decay_the_average_over_time(self, clock: Clock) -> None:
        """A faster response moves the average down by an amount that grows with elapsed time."""
        (soon, late) = endpoints(2)
        for ep in (soon, late):
            ep.observe(100 * MS, clock.now_ns)
        soon.observe(1 * MS, clock.now_ns + 1 * S)
        late.observe(1 * MS, clock.now_ns + 30 * S)
        assert 1 * MS < late.ewma_ns < soon.ewma_ns < 100 * MS

    def test_pending_requests_scale_the_cost(self, clock: Clock) -> None:
        """Cost is the latency estimate times (requests in flight + 1)."""
        (ep,) = endpoints(1)
        ep.pending = 4
        assert ep.cost(clock.now_ns) == pytest.approx(5 * DEFAULT_RTT_NS)


class TestRoundRobin:
    def test_cycles_evenly_in_order(self) -> None:
        """Round robin visits endpoints in order and gives each the same share."""
        eps = endpoints(3)
        balancer = RoundRobinBalancer(eps)
        assert [balancer.pick() for _ in range(6)] == [*eps, *eps]
        picks = count_picks(RoundRobinBalancer(eps))
        assert sorted(picks.values()) == [333, 333, 334]

    def test_ignores_load(self) -> None:
        """Round robin does not look at latency or requests in flight."""
        eps = endpoints(2)
        eps[0].pending = 100
        assert count_picks(RoundRobinBalancer(eps)) == Counter({40000: 500, 40001: 500})

    def test_empty_gives_none(self) -> None:
        """With no endpoints, round robin returns None."""
        assert RoundRobinBalancer([]).pick() is None
