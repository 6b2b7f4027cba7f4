"""The registry's incremental indexes: endpoints by service and proxies by watched service."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from gossamer.control.registry import Registry, Workload
from gossamer.control.snapshots import EndpointInfo
from gossamer.identity.spiffe import SpiffeId

ServiceKey = tuple[str, str]


class NullSession:
    """A stream that drops everything."""

    def send(self, message: Mapping[str, Any]) -> None:
        del message

    def close(self) -> None:
        return None


def workload(service: str, port: int | None = 8000, address: str = "10.0.0.1") -> Workload:
    return Workload(service, "default", address, port, None, {"app": service})


def connect(registry: Registry, proxy_id: str, wl: Workload) -> Any:
    identity = SpiffeId("gossamer.local", "default", wl.service)
    return registry.connect(proxy_id, identity, wl, NullSession())[0]


def walked_endpoints(registry: Registry) -> dict[ServiceKey, list[EndpointInfo]]:
    """The definition the index must match: walk every record in registry order."""
    out: dict[ServiceKey, list[EndpointInfo]] = {}
    for record in registry:
        if record.is_endpoint and record.healthy:
            out.setdefault(record.workload.key, []).append(record.endpoint())
    return out


def as_lists(endpoints: Mapping[ServiceKey, Any]) -> dict[ServiceKey, list[EndpointInfo]]:
    return {key: list(value) for key, value in endpoints.items()}


class TestHealthyEndpoints:
    def test_matches_a_full_walk_after_random_changes(self) -> None:
        """After joins, moves between services, health flips and expiries the index equals
        a walk over all records (same keys, same endpoints, same order)."""
        rng = random.Random(7)
        registry = Registry()
        for step in range(600):
            proxy_id = f"p{rng.randrange(40)}"
            record = registry.get(proxy_id)
            action = rng.randrange(4)
            if action == 0 or record is None:
                port = rng.choice([None, 8000, 8001])
                wl = workload(f"s{rng.randrange(4)}", port, f"10.0.0.{rng.randrange(3)}")
                connect(registry, proxy_id, wl)
            elif action == 1:
                registry.set_healthy(record, not record.healthy)
            elif action == 2:
                registry.disconnect(record)
            else:
                registry.disconnect(record)
                registry.expire(proxy_id, record.epoch)
            if step % 3 == 0:
                assert as_lists(registry.healthy_endpoints()) == walked_endpoints(registry)
        assert as_lists(registry.healthy_endpoints()) == walked_endpoints(registry)

    def test_unhealthy_endpoint_is_left_out_until_healthy_again(self) -> None:
        """A health report of false drops the endpoint; true brings it back."""
        registry = Registry()
        record = connect(registry, "a-1", workload("a"))
        assert registry.set_healthy(record, False)
        assert ("default", "a") not in registry.healthy_endpoints()
        assert registry.set_healthy(record, True)
        assert list(registry.healthy_endpoints()[("default", "a")]) == [record.endpoint()]

    def test_returned_mapping_does_not_change_afterwards(self) -> None:
        """A mapping already handed out keeps its content when the registry changes."""
        registry = Registry()
        connect(registry, "a-1", workload("a"))
        before = registry.healthy_endpoints()
        connect(registry, "a-2", workload("a", address="10.0.0.2"))
        assert len(before[("default", "a")]) == 1
        assert len(registry.healthy_endpoints()[("default", "a")]) == 2

    def test_unchanged_registry_returns_the_same_mapping(self) -> None:
        """Reading twice with no change in between rebuilds nothing."""
        registry = Registry()
        connect(registry, "a-1", workload("a"))
        assert registry.healthy_endpoints() is registry.healthy_endpoints()

    def test_endpoint_objects_are_reused_between_reads(self) -> None:
        """A change to one service leaves the endpoint objects of the others as they were."""
        registry = Registry()
        connect(registry, "a-1", workload("a"))
        first = registry.healthy_endpoints()[("default", "a")]
        connect(registry, "b-1", workload("b"))
        assert registry.healthy_endpoints()[("default", "a")] is first

    def test_health_report_on_a_replaced_record_changes_nothing(self) -> None:
        """Only the current record of a proxy_id decides its endpoint."""
        registry = Registry()
        old = connect(registry, "a-1", workload("a"))
        connect(registry, "a-1", workload("a"))
        registry.set_healthy(old, False)
        assert len(registry.healthy_endpoints()[("default", "a")]) == 1


class TestWorkloadServices:
    def test_follows_joins_and_expiries(self) -> None:
        """A service is listed while at least one record of it remains."""
        registry = Registry()
        record = connect(registry, "a-1", workload("a", port=None))
        assert registry.workload_services() == {("default", "a")}
        registry.disconnect(record)
        registry.expire("a-1", record.epoch)
        assert registry.workload_services() == frozenset()


class TestWatchers:
    def test_set_watched_indexes_the_proxy(self) -> None:
        """watchers(key) lists the proxies whose watched set holds key, and only those."""
        registry = Registry()
        web = connect(registry, "web-1", workload("web"))
        registry.set_watched(web, frozenset({("default", "a"), ("default", "b")}))
        registry.set_watched(web, frozenset({("default", "b")}))
        assert registry.watchers(("default", "a")) == frozenset()
        assert registry.watchers(("default", "b")) == {"web-1"}

    def test_reconnect_drops_the_old_watches(self) -> None:
        """A resumed proxy watches nothing until its next snapshot is computed."""
        registry = Registry()
        web = connect(registry, "web-1", workload("web"))
        registry.set_watched(web, frozenset({("default", "a")}))
        connect(registry, "web-1", workload("web"))
        assert registry.watchers(("default", "a")) == frozenset()

    def test_expiry_drops_the_watches(self) -> None:
        """An expired proxy is no longer a watcher."""
        registry = Registry()
        web = connect(registry, "web-1", workload("web"))
        registry.set_watched(web, frozenset({("default", "a")}))
        registry.disconnect(web)
        registry.expire("web-1", web.epoch)
        assert registry.watchers(("default", "a")) == frozenset()

    def test_replaced_record_does_not_register_watches(self) -> None:
        """set_watched on a record that a reconnect replaced leaves the index alone."""
        registry = Registry()
        old = connect(registry, "web-1", workload("web"))
        connect(registry, "web-1", workload("web"))
        registry.set_watched(old, frozenset({("default", "a")}))
        assert registry.watchers(("default", "a")) == frozenset()
