"""Least-request (power of two choices on requests in flight) and consistent-hash balancers."""

from __future__ import annotations

import random
from collections import Counter

from gossamer.proxy.pipeline.balancer import (
    ConsistentHashBalancer,
    EndpointAddr,
    EndpointState,
    LeastRequestBalancer,
    hash_key64,
)

KEYS = [b"user-%d" % i for i in range(5000)]


def endpoints(n: int, first_port: int = 40000) -> list[EndpointState]:
    return [EndpointState(EndpointAddr("127.0.0.1", first_port + i), {}) for i in range(n)]


def owners(balancer: ConsistentHashBalancer) -> dict[bytes, int]:
    out = {}
    for key in KEYS:
        chosen = balancer.pick_for(key)
        assert chosen is not None
        out[key] = chosen.addr.port
    return out


class TestLeastRequest:
    def test_busy_endpoint_is_avoided(self) -> None:
        """An endpoint with many requests in flight is never chosen over an idle one."""
        eps = endpoints(2)
        eps[0].pending = 50
        balancer = LeastRequestBalancer(eps, random.Random(1))
        picks = Counter(balancer.pick().addr.port for _ in range(1000))  # type: ignore[union-attr]
        assert picks == Counter({40001: 1000})

    def test_load_spreads_to_the_least_loaded_of_two(self) -> None:
        """With pending 0..9 on ten endpoints, the idle ones get most picks and the busiest
        none (it can only lose a comparison); the two draws are distinct endpoints."""
        eps = endpoints(10)
        for i, ep in enumerate(eps):
            ep.pending = i
        balancer = LeastRequestBalancer(eps, random.Random(2))
        picks = Counter(balancer.pick().addr.port for _ in range(10_000))  # type: ignore[union-attr]
        assert picks[40009] == 0
        # P(pick endpoint i) = 2*(9-i)/90 for distinct draws: endpoint 0 gets 20%.
        assert abs(picks[40000] / 10_000 - 0.20) <= 0.02
        assert picks[40000] > picks[40004] > picks[40008]

    def test_empty_and_single(self) -> None:
        """No endpoints gives None; one endpoint is always chosen."""
        assert LeastRequestBalancer([]).pick() is None
        (only,) = endpoints(1)
        assert LeastRequestBalancer([only]).pick() is only


class TestConsistentHash:
    def test_same_key_same_endpoint(self) -> None:
        """A key maps to the same endpoint every time, and across balancer rebuilds."""
        eps = endpoints(5)
        first = owners(ConsistentHashBalancer(eps))
        again = owners(ConsistentHashBalancer(list(reversed(eps))))
        assert first == again

    def test_keys_spread_over_endpoints(self) -> None:
        """5,000 keys over 5 endpoints: each gets 20% within ±6 points."""
        counts = Counter(owners(ConsistentHashBalancer(endpoints(5))).values())
        assert len(counts) == 5
        assert all(abs(c / len(KEYS) - 0.2) <= 0.06 for c in counts.values())

    def test_removing_an_endpoint_moves_only_its_keys(self) -> None:
        """When one endpoint leaves, keys of the others stay where they were."""
        eps = endpoints(6)
        before = owners(ConsistentHashBalancer(eps))
        after = owners(ConsistentHashBalancer([ep for ep in eps if ep.addr.port != 40002]))
        moved = [k for k in KEYS if before[k] != after[k]]
        assert moved and all(before[k] == 40002 for k in moved)
        assert all(after[k] != 40002 for k in KEYS)

    def test_adding_an_endpoint_moves_keys_only_to_it(self) -> None:
        """A new endpoint takes about 1/n of the keys, all from others, and nothing else moves."""
        eps = endpoints(7)
        before = owners(ConsistentHashBalancer(eps[:6]))
        after = owners(ConsistentHashBalancer(eps))
        moved = [k for k in KEYS if before[k] != after[k]]
        assert all(after[k] == 40006 for k in moved)
        assert abs(len(moved) / len(KEYS) - 1 / 7) <= 0.06

    def test_unhealthy_owner_falls_back_to_the_next_healthy_one(self) -> None:
        """With the owner rejected by ``healthy``, the key goes to another endpoint, always the
        same one, and keys of healthy owners do not move."""
        eps = endpoints(4)
        balancer = ConsistentHashBalancer(eps)
        before = owners(balancer)

        def healthy(ep: EndpointState) -> bool:
            return ep.addr.port != 40001

        for key in KEYS[:500]:
            chosen = balancer.pick_for(key, healthy)
            assert chosen is not None and chosen.addr.port != 40001
            if before[key] != 40001:
                assert chosen.addr.port == before[key]
            assert balancer.pick_for(key, healthy) is chosen

    def test_no_healthy_endpoint_returns_the_owner(self) -> None:
        """When every endpoint is rejected the key's own endpoint is returned (panic mode)."""
        balancer = ConsistentHashBalancer(endpoints(3))
        owner = balancer.pick_for(b"k")
        assert balancer.pick_for(b"k", lambda ep: False) is owner

    def test_no_key_picks_at_random_and_empty_gives_none(self) -> None:
        """pick() without a key spreads over all endpoints; no endpoints gives None."""
        balancer = ConsistentHashBalancer(endpoints(3), random.Random(4))
        seen = {balancer.pick().addr.port for _ in range(200)}  # type: ignore[union-attr]
        assert seen == {40000, 40001, 40002}
        empty = ConsistentHashBalancer([])
        assert empty.pick() is None and empty.pick_for(b"k") is None

    def test_hash_is_stable_across_processes(self) -> None:
        """The ring hash does not depend on PYTHONHASHSEED (BLAKE2b-64 of the empty string)."""
        assert hash_key64(b"") == int.from_bytes(bytes.fromhex("e4a6a0577479b2b4"), "big")
