"""Route tables: host normalisation, snapshot compilation and validation, resolve caching."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from gossamer.proxy.observe.metrics import Metrics
from gossamer.proxy.pipeline.balancer import PeakEwmaBalancer, RoundRobinBalancer
from gossamer.proxy.snapshot import table as routing
from gossamer.proxy.snapshot.table import RouteTable, SnapshotError, compile_snapshot, service_key

TD = "spiffe://gossamer.local/ns/default/sa"


def make_snapshot() -> dict[str, Any]:
    """A valid snapshot in the shape of docs/internals.md §5, with two services."""
    return {
        "version": 12,
        "trust_domain": "gossamer.local",
        "proxy": {"service": "frontend", "namespace": "default", "identity": f"{TD}/frontend"},
        "inbound": {"mtls": "STRICT"},
        "outbound": {
            "services": [
                {
                    "name": "catalog",
                    "namespace": "default",
                    "identity": f"{TD}/catalog",
                    "protocol": "http",
                    "endpoints": [
                        {"address": "127.0.0.1", "port": 41234, "labels": {"version": "v1"}},
                        {"address": "127.0.0.1", "port": 41235, "labels": {"version": "v2"}},
                    ],
                },
                {
                    "name": "orders",
                    "namespace": "shop",
                    "identity": "spiffe://gossamer.local/ns/shop/sa/orders",
                    "endpoints": [{"address": "127.0.0.2", "port": 42000}],
                },
            ],
            "unknown": ["nosuch.default"],
        },
    }


def compile_(snapshot: Any, previous: RouteTable | None = None, **kw: Any) -> RouteTable:
    return compile_snapshot(
        snapshot, metrics=Metrics("frontend", "default"), previous=previous, **kw
    )


class TestServiceKey:
    @pytest.mark.parametrize(
        ("host", "expected"),
        [
            ("catalog", "catalog.default"),
            ("catalog.shop", "catalog.shop"),
            ("catalog.shop.svc", "catalog.shop"),
            ("catalog.shop.svc.cluster.local", "catalog.shop"),
            ("catalog.shop.svc.cluster.local.", "catalog.shop"),
            ("catalog:8080", "catalog.default"),
            ("catalog.shop.svc:80", "catalog.shop"),
            ("CATALOG.Shop.SVC", "catalog.shop"),
            ("  catalog  ", "catalog.default"),
        ],
    )
    def test_mesh_names_normalise_to_name_dot_namespace(self, host: str, expected: str) -> None:
        """Short, namespaced and cluster-DNS forms (any case, with a port) give ``name.ns``."""
        assert service_key(host, "default") == expected

    @pytest.mark.parametrize(
        "host",
        [
            "127.0.0.1",
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]",
            "[::1]:8080",
            "[2001:db8::1]:443",
            "www.example.com",
            "catalog.shop.svc.cluster.other",
            "catalog.shop.local",
            "",
            ":80",
        ],
    )
    def test_ips_and_other_domains_are_not_services(self, host: str) -> None:
        """IPv4, bracketed IPv6, empty hosts and foreign domains give None."""
        assert service_key(host, "default") is None

    def test_short_name_uses_the_given_namespace(self) -> None:
        """A bare name lives in the caller's namespace."""
        assert service_key("catalog", "shop") == "catalog.shop"


class TestCompileSnapshot:
    def test_services_are_keyed_by_name_dot_namespace(self) -> None:
        """Each service is compiled under ``name.ns`` with identity, SNI and endpoints."""
        table = compile_(make_snapshot())
        assert set(table.services) == {"catalog.default", "orders.shop"}
        catalog = table.services["catalog.default"]
        assert catalog.identity == f"{TD}/catalog"
        assert catalog.sni == "catalog.default.svc"
        assert catalog.protocol == "http"
        assert [str(ep.addr) for ep in catalog.balancer.endpoints] == [
            "127.0.0.1:41234",
            "127.0.0.1:41235",
        ]
        assert catalog.balancer.endpoints[1].labels == {"version": "v2"}
        assert table.version == 12
        assert table.unknown == frozenset({"nosuch.default"})
        assert table.namespace == "default"

    def test_defaults_peak_ewma_and_round_robin_selectable(self) -> None:
        """Peak-EWMA is the default balancer; ``balancer="round-robin"`` selects round robin."""
        assert isinstance(
            compile_(make_snapshot()).services["catalog.default"].balancer, PeakEwmaBalancer
        )
        table = compile_(make_snapshot(), balancer="round-robin")
        assert isinstance(table.services["catalog.default"].balancer, RoundRobinBalancer)

    def test_endpoint_state_is_reused_by_address(self) -> None:
        """A new snapshot keeps the EndpointState of addresses already known, with new labels."""
        first = compile_(make_snapshot())
        old = first.services["catalog.default"].balancer.endpoints[0]
        old.pending = 3
        old.ewma_ns = 5e6
        snap = make_snapshot()
        snap["version"] = 13
        eps = snap["outbound"]["services"][0]["endpoints"]
        eps[0]["labels"] = {"version": "v9"}
        eps[1]["port"] = 41299  # a new endpoint replaces 41235
        second = compile_(snap, previous=first)
        new_eps = second.services["catalog.default"].balancer.endpoints
        assert new_eps[0] is old
        assert (new_eps[0].pending, new_eps[0].ewma_ns) == (3, 5e6)
        assert new_eps[0].labels == {"version": "v9"}
        assert new_eps[1] is not first.services["catalog.default"].balancer.endpoints[1]
        assert new_eps[1].pending == 0

    def test_endpoints_map_lists_every_endpoint(self) -> None:
        """``RouteTable.endpoints()`` maps (host, port) to the state of every endpoint."""
        table = compile_(make_snapshot())
        assert set(table.endpoints()) == {
            ("127.0.0.1", 41234),
            ("127.0.0.1", 41235),
            ("127.0.0.2", 42000),
        }

    def test_same_route_stats_for_same_service_across_versions(self) -> None:
        """Route stats come from the shared Metrics, so a recompiled service keeps its counters."""
        metrics = Metrics("frontend", "default")
        first = compile_snapshot(make_snapshot(), metrics=metrics, previous=None)
        second = compile_snapshot(make_snapshot(), metrics=metrics, previous=first)
        assert second.services["catalog.default"].stats is first.services["catalog.default"].stats

    @pytest.mark.parametrize(("mode", "expected"), [(None, "STRICT"), ("PERMISSIVE", "PERMISSIVE")])
    def test_mtls_mode_is_parsed(self, mode: str | None, expected: str) -> None:
        """``inbound.mtls`` is STRICT by default and PERMISSIVE when asked."""
        snap = make_snapshot()
        if mode is None:
            del snap["inbound"]
        else:
            snap["inbound"]["mtls"] = mode
        assert compile_(snap).mtls == expected

    def test_bad_mtls_mode_is_refused(self) -> None:
        """An mtls mode other than STRICT or PERMISSIVE is refused, naming the field."""
        snap = make_snapshot()
        snap["inbound"]["mtls"] = "strict"
        with pytest.raises(SnapshotError, match=r"^snapshot\.inbound\.mtls"):
            compile_(snap)

    def test_empty_service_list_compiles(self) -> None:
        """A snapshot with no services is valid (an app that calls nothing yet)."""
        snap = make_snapshot()
        snap["outbound"] = {"services": []}
        table = compile_(snap)
        assert table.services == {}
        assert table.unknown == frozenset()


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(snap: dict[str, Any]) -> None:
        node: Any = snap
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return mutate


def _delete(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(snap: dict[str, Any]) -> None:
        node: Any = snap
        for step in path[:-1]:
            node = node[step]
        del node[path[-1]]

    return mutate


SVC = ["outbound", "services", 0]
EP1 = [*SVC, "endpoints", 1]
MALFORMED: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("snapshot.version", _delete(["version"])),
    ("snapshot.version", _set(["version"], "12")),
    ("snapshot.version", _set(["version"], True)),
    ("snapshot.proxy", _delete(["proxy"])),
    ("snapshot.proxy", _set(["proxy"], "frontend")),
    ("snapshot.proxy.namespace", _delete(["proxy", "namespace"])),
    ("snapshot.proxy.service", _set(["proxy", "service"], 3)),
    ("snapshot.outbound", _delete(["outbound"])),
    ("snapshot.outbound.services", _set(["outbound", "services"], {"catalog": {}})),
    ("snapshot.outbound.unknown", _set(["outbound", "unknown"], "nosuch")),
    ("snapshot.outbound.unknown", _set(["outbound", "unknown"], [1])),
    ("snapshot.outbound.services[0]", _set(SVC, "catalog")),
    ("snapshot.outbound.services[0].name", _delete([*SVC, "name"])),
    ("snapshot.outbound.services[0].namespace", _set([*SVC, "namespace"], None)),
    ("snapshot.outbound.services[0].identity", _set([*SVC, "identity"], 7)),
    ("snapshot.outbound.services[0].identity", _set([*SVC, "identity"], "https://x/y")),
    ("snapshot.outbound.services[0].endpoints", _delete([*SVC, "endpoints"])),
    ("snapshot.outbound.services[0].endpoints", _set([*SVC, "endpoints"], {})),
    ("snapshot.outbound.services[0].endpoints[1]", _set(EP1, ["127.0.0.1", 1])),
    ("snapshot.outbound.services[0].endpoints[1].address", _set([*EP1, "address"], None)),
    ("snapshot.outbound.services[0].endpoints[1].port", _set([*EP1, "port"], "41235")),
    ("snapshot.outbound.services[0].endpoints[1].port", _set([*EP1, "port"], 41235.0)),
    ("snapshot.outbound.services[0].endpoints[1].port", _set([*EP1, "port"], True)),
    ("snapshot.outbound.services[0].endpoints[1].port", _set([*EP1, "port"], 0)),
    ("snapshot.outbound.services[0].endpoints[1].port", _set([*EP1, "port"], 65536)),
    ("snapshot.outbound.services[0].endpoints[1].labels", _set([*EP1, "labels"], ["v1"])),
]


@pytest.mark.parametrize(
    ("path", "mutate"), MALFORMED, ids=[f"{i}-{p}" for i, (p, _) in enumerate(MALFORMED)]
)
def test_malformed_field_is_refused_naming_its_path(
    path: str, mutate: Callable[[dict[str, Any]], None]
) -> None:
    """Every malformed field raises SnapshotError whose message starts with the field's path."""
    snap = copy.deepcopy(make_snapshot())
    mutate(snap)
    with pytest.raises(SnapshotError) as info:
        compile_(snap)
    message = str(info.value)
    assert message.startswith(path), message
    assert message[len(path)] in ":.", message  # the path ends there, e.g. not [0] vs [0].name


def test_non_object_snapshot_is_refused() -> None:
    """A snapshot that is not a JSON object is refused."""
    with pytest.raises(SnapshotError, match=r"^snapshot"):
        compile_([1, 2])


class TestDefaultService:
    def test_gateway_routes_foreign_hosts_to_default_service(self) -> None:
        """With a default service, hosts that are no mesh service go to it."""
        table = compile_(make_snapshot(), default_service="catalog")
        assert table.default_service is table.services["catalog.default"]
        assert table.resolve(b"www.example.com") is table.services["catalog.default"]
        assert table.resolve(b"127.0.0.1:8080") is table.services["catalog.default"]

    def test_mesh_hosts_still_route_to_their_service(self) -> None:
        """A known mesh host wins over the default service."""
        table = compile_(make_snapshot(), default_service="catalog")
        assert table.resolve(b"orders.shop") is table.services["orders.shop"]

    def test_default_service_absent_from_snapshot_gives_none(self) -> None:
        """A default service not (yet) in the snapshot leaves hosts unresolved."""
        table = compile_(make_snapshot(), default_service="payments")
        assert table.default_service is None
        assert table.resolve(b"www.example.com") is None

    def test_default_service_may_name_a_namespace(self) -> None:
        """``orders.shop`` as default service names the service in that namespace."""
        table = compile_(make_snapshot(), default_service="orders.shop")
        assert table.default_service is table.services["orders.shop"]


class TestResolve:
    @pytest.mark.parametrize(
        "host", [b"catalog", b"catalog:80", b"catalog.default.svc.cluster.local", b"Catalog"]
    )
    def test_host_aliases_resolve_to_the_service(self, host: bytes) -> None:
        """Every host alias of a service resolves to the same OutboundService."""
        table = compile_(make_snapshot())
        assert table.resolve(host) is table.services["catalog.default"]

    def test_unknown_host_resolves_to_none(self) -> None:
        """Hosts that are not in the table resolve to None."""
        table = compile_(make_snapshot())
        assert table.resolve(b"payments") is None
        assert table.resolve(b"www.example.com") is None

    def test_results_are_cached(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A host is normalised once; later lookups (hits and misses) come from the cache."""
        calls: list[str] = []
        real = routing.service_key

        def counting(host: str, ns: str) -> str | None:
            calls.append(host)
            return real(host, ns)

        monkeypatch.setattr(routing, "service_key", counting)
        table = compile_(make_snapshot())
        for _ in range(3):
            assert table.resolve(b"catalog") is table.services["catalog.default"]
            assert table.resolve(b"junk.example.org") is None
        assert calls == ["catalog", "junk.example.org"]

    def test_cache_is_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """However many distinct hosts are looked up, the cache stays within its limit."""
        monkeypatch.setattr(routing, "_HOST_CACHE_LIMIT", 16)
        table = compile_(make_snapshot(), default_service=None)
        for i in range(200):
            table.resolve(b"junk-%d.example.org" % i)
            table.resolve(b"catalog:%d" % (1000 + i))
            assert len(table._hosts) <= 16
        assert table.resolve(b"catalog:1") is table.services["catalog.default"]
