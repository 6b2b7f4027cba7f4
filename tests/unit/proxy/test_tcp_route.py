"""TCP routes as compiled from the snapshot, weighted picks and the drain rule."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from gossamer.proxy.observe.metrics import Metrics
from gossamer.proxy.snapshot.errors import SnapshotError
from gossamer.proxy.snapshot.table import compile_snapshot
from gossamer.proxy.snapshot.tcp_rules import TcpBackend, TcpRoute, still_routed


def raw_route(**overrides: Any) -> dict[str, Any]:
    route: dict[str, Any] = {
        "backends": [{"service": "db-blue.default", "weight": 100}],
        "drain_ms": 3000,
    }
    route.update(overrides)
    return route


class TestFromSnapshot:
    def test_null_means_no_route(self) -> None:
        """A service without a TCP route compiles to None."""
        assert TcpRoute.from_snapshot(None, "x") is None

    def test_backends_and_drain_are_compiled(self) -> None:
        """Backends keep their order and weights; the drain is in seconds."""
        route = TcpRoute.from_snapshot(
            raw_route(backends=[{"service": "a.default", "weight": 90},
                                {"service": "b.prod", "weight": 10}]),
            "x",
        )
        assert route == TcpRoute((TcpBackend("a.default", 90), TcpBackend("b.prod", 10)), 3.0)

    def test_drain_defaults_to_thirty_seconds(self) -> None:
        """Without drain_ms, old connections get the documented default of 30 s."""
        route = TcpRoute.from_snapshot({"backends": [{"service": "a.default"}]}, "x")
        assert route is not None and route.drain == 30.0

    @pytest.mark.parametrize(
        ("raw", "field"),
        [
            ("nope", "x: expected an object"),
            (raw_route(backends=[]), "x.backends"),
            (raw_route(backends=[{"service": "a", "weight": 1}]), "x.backends[0].service"),
            (raw_route(backends=[{"service": "a.b", "weight": -1}]), "x.backends[0].weight"),
            (raw_route(backends=[{"service": "a.b", "weight": True}]), "x.backends[0].weight"),
            (raw_route(backends=[{"service": "a.b", "weight": 0}]), "x.backends: at least"),
            (raw_route(backends=[{"service": "a.b"}, {"service": "a.b"}]),
             "x.backends[1].service"),
            (raw_route(drain_ms="3s"), "x.drain_ms"),
        ],
    )
    def test_malformed_routes_name_the_field(self, raw: Any, field: str) -> None:
        """Every malformed part is refused with its path in the message."""
        with pytest.raises(SnapshotError, match=field.replace("[", r"\[").replace("]", r"\]")):
            TcpRoute.from_snapshot(raw, "x")

    def test_compiled_into_the_outbound_service(self) -> None:
        """compile_snapshot puts the route on the service it belongs to."""
        snapshot = {
            "version": 3,
            "proxy": {"service": "app", "namespace": "default"},
            "outbound": {
                "services": [{
                    "name": "db", "namespace": "default",
                    "identity": "spiffe://td/ns/default/sa/db", "protocol": "tcp",
                    "endpoints": [], "tcp_route": raw_route(),
                }],
            },
        }
        table = compile_snapshot(snapshot, metrics=Metrics("app", "default"), previous=None)
        route = table.services["db.default"].tcp_route
        assert route is not None and route.backends[0].service_key == "db-blue.default"

    def test_bad_route_in_a_snapshot_is_refused(self) -> None:
        """A malformed route makes the whole snapshot fail (it is NACKed)."""
        snapshot = {
            "version": 3,
            "proxy": {"service": "app", "namespace": "default"},
            "outbound": {
                "services": [{
                    "name": "db", "namespace": "default",
                    "identity": "spiffe://td/ns/default/sa/db",
                    "endpoints": [], "tcp_route": {"backends": []},
                }],
            },
        }
        with pytest.raises(SnapshotError, match=r"services\[0\]\.tcp_route\.backends"):
            compile_snapshot(snapshot, metrics=Metrics("app", "default"), previous=None)


class TestPick:
    def test_weights_split_new_connections(self) -> None:
        """A 90/10 route sends about 90% of picks to the first backend."""
        route = TcpRoute((TcpBackend("a.d", 90), TcpBackend("b.d", 10)), 1.0)
        rng = random.Random(7)
        counts = Counter(route.pick(rng) for _ in range(5000))
        assert 0.87 < counts["a.d"] / 5000 < 0.93

    def test_zero_weight_backends_get_nothing(self) -> None:
        """A backend with weight 0 is never picked."""
        route = TcpRoute((TcpBackend("old.d", 0), TcpBackend("new.d", 1)), 1.0)
        rng = random.Random(1)
        assert {route.pick(rng) for _ in range(200)} == {"new.d"}


class TestStillRouted:
    def test_backend_still_in_the_route(self) -> None:
        """A connection to a backend that keeps a weight stays."""
        route = TcpRoute((TcpBackend("blue.d", 50), TcpBackend("green.d", 50)), 1.0)
        assert still_routed(route, "db.d", "blue.d")

    def test_backend_gone_or_zero_weight(self) -> None:
        """A connection whose backend left the route, or has weight 0, is drained."""
        route = TcpRoute((TcpBackend("blue.d", 0), TcpBackend("green.d", 1)), 1.0)
        assert not still_routed(route, "db.d", "blue.d")
        assert not still_routed(route, "db.d", "red.d")

    def test_without_a_route_only_the_service_itself(self) -> None:
        """No route: connections to the service itself stay, those to former backends go."""
        assert still_routed(None, "db.d", "db.d")
        assert not still_routed(None, "db.d", "blue.d")
