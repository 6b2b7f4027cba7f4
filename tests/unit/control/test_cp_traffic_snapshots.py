"""Snapshots with traffic resources: routes merged and ordered, policies and their defaults,
TCP routes, referenced backends included, inbound ports and rate limit (internals §8)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gossamer.config import HTTPRoute, TCPRoute, TrafficPolicy, validate_documents
from gossamer.control.snapshots import (
    EndpointInfo,
    MeshView,
    ServiceInfo,
    build_snapshot,
    select_services,
    traffic_index,
)
from tests.unit.config.traffic_docs import doc, policy, route, tcp

ServiceKey = tuple[str, str]


def mesh(
    services: Sequence[ServiceInfo] = (),
    resources: Sequence[dict[str, Any]] = (),
    endpoints: dict[ServiceKey, list[EndpointInfo]] | None = None,
) -> MeshView:
    """A view with these Service infos, traffic documents and endpoints."""
    validated = validate_documents(list(resources)) if resources else []
    return MeshView(
        trust_domain="gossamer.local",
        mtls_mode="STRICT",
        services={(s.namespace, s.name): s for s in services},
        endpoints=endpoints or {},
        traffic=traffic_index(
            [r for r in validated if isinstance(r, HTTPRoute)],
            [r for r in validated if isinstance(r, TrafficPolicy)],
            [r for r in validated if isinstance(r, TCPRoute)],
        ),
    )


def svc(name: str, namespace: str = "default", **kw: Any) -> ServiceInfo:
    return ServiceInfo(name, namespace, name, **kw)


def entry(snapshot: dict[str, Any], name: str, namespace: str = "default") -> dict[str, Any]:
    for item in snapshot["outbound"]["services"]:
        if (item["name"], item["namespace"]) == (name, namespace):
            return dict(item)
    raise AssertionError(f"{name}.{namespace} not in the snapshot")


def names(snapshot: dict[str, Any]) -> list[str]:
    return [f"{s['name']}.{s['namespace']}" for s in snapshot["outbound"]["services"]]


CANARY = {
    "name": "canary",
    "matches": [{"headers": [{"name": "x-canary", "value": "1"}]}],
    "backends": [{"service": "catalog", "subset": {"version": "v2"}}],
}
SPLIT = {
    "backends": [
        {"service": "catalog", "subset": {"version": "v1"}, "weight": 90},
        {"service": "catalog", "subset": {"version": "v2"}, "weight": 10},
    ]
}


def test_routed_service_snapshot_example() -> None:
    """A subscriber of catalog gets catalog's rules (canary first, then a 90/10 split) with
    its endpoints, ports and default policy; the exact entry is pinned here."""
    view = mesh(
        [svc("web"), svc("catalog", ports=((8080, "http"),))],
        [route(CANARY, SPLIT)],
        {("default", "catalog"): [EndpointInfo("127.0.0.1", 4001, {"version": "v1"}),
                                  EndpointInfo("127.0.0.1", 4002, {"version": "v2"})]},
    )  # fmt: skip
    snapshot = build_snapshot("default", "web", ["catalog"], view)
    no_filters = {
        "request_headers": {"set": {}, "add": {}, "remove": []},
        "response_headers": {"set": {}, "add": {}, "remove": []},
        "rewrite": None, "redirect": None, "mirror": None, "fault": None,
    }  # fmt: skip
    assert snapshot["outbound"] == {
        "services": [
            {
                "name": "catalog",
                "namespace": "default",
                "identity": "spiffe://gossamer.local/ns/default/sa/catalog",
                "protocol": "http",
                "endpoints": [
                    {"address": "127.0.0.1", "port": 4001, "labels": {"version": "v1"}},
                    {"address": "127.0.0.1", "port": 4002, "labels": {"version": "v2"}},
                ],
                "ports": [{"port": 8080, "protocol": "http"}],
                "http_routes": [
                    {
                        "name": "catalog/canary",
                        "matches": [{"path": None, "method": None, "query": [],
                                     "headers": [{"name": "x-canary", "type": "Exact",
                                                  "value": "1"}]}],
                        "backends": [{"service": "catalog.default", "subset": {"version": "v2"},
                                      "weight": 1}],
                        "filters": no_filters,
                        "timeout_ms": None,
                        "retry": None,
                    },
                    {
                        "name": "catalog/1",
                        "matches": [],
                        "backends": [
                            {"service": "catalog.default", "subset": {"version": "v1"},
                             "weight": 90},
                            {"service": "catalog.default", "subset": {"version": "v2"},
                             "weight": 10},
                        ],
                        "filters": no_filters,
                        "timeout_ms": None,
                        "retry": None,
                    },
                ],
                "policy": {
                    "load_balancer": {"type": "PeakEWMA", "hash_header": None,
                                      "hash_cookie": None},
                    "connection_pool": {"max_connections": 0, "max_pending": 0,
                                        "max_requests_per_connection": 0},
                    "outlier": None,
                    "timeout_ms": None,
                    "retry": None,
                    "retry_budget": {"ratio": 0.2, "min_per_second": 10, "window_ms": 10000},
                },
                "tcp_route": None,
                "mtls": "STRICT",
                "port_mtls": [],
            }
        ],
        "unknown": [],
        "filters": [],
        "egress": {"mode": "ALLOW_ANY", "hosts": []},
    }  # fmt: skip


def test_routes_of_several_httproutes_merge_in_name_order() -> None:
    """HTTPRoutes for one service merge by route name; rules keep their order inside each."""
    view = mesh(
        [svc("catalog")],
        [
            route({"name": "z"}, name="zeta"),
            route({"name": "b"}, {"name": "a"}, name="alpha"),
            route({"name": "other"}, name="beta", namespace="shop", service="catalog.default"),
            route({"name": "elsewhere"}, name="aaa", service="orders"),
        ],
    )
    rules = entry(build_snapshot("default", "web", ["catalog"], view), "catalog")["http_routes"]
    assert [r["name"] for r in rules] == ["alpha/b", "alpha/a", "beta/other", "zeta/z"]


def test_service_without_traffic_resources_gets_defaults() -> None:
    """No routes, no policy, no TCP route: empty rules, default policy, null tcp_route."""
    item = entry(build_snapshot("default", "web", ["catalog"], mesh([svc("catalog")])), "catalog")
    assert item["http_routes"] == []
    assert item["policy"]["load_balancer"]["type"] == "PeakEWMA"
    assert item["policy"]["retry_budget"] == {"ratio": 0.2, "min_per_second": 10,
                                              "window_ms": 10000}  # fmt: skip
    assert item["tcp_route"] is None
    assert item["ports"] == [{"port": 80, "protocol": "http"}]


def test_traffic_policy_applies_to_its_service_entry() -> None:
    """The TrafficPolicy of catalog becomes catalog's policy in callers' snapshots."""
    view = mesh([svc("catalog")], [policy(loadBalancer={"type": "RoundRobin"}, timeout="3s")])
    item = entry(build_snapshot("default", "web", ["catalog"], view), "catalog")
    assert item["policy"]["load_balancer"]["type"] == "RoundRobin"
    assert item["policy"]["timeout_ms"] == 3000


def test_first_policy_by_name_wins() -> None:
    """Of two TrafficPolicies for one service, the first by name applies."""
    first = doc("TrafficPolicy", {"service": "catalog", "timeout": "1s"}, name="a-policy")
    second = doc("TrafficPolicy", {"service": "catalog", "timeout": "9s"}, name="b-policy")
    view = mesh([svc("catalog")], [second, first])
    item = entry(build_snapshot("default", "web", ["catalog"], view), "catalog")
    assert item["policy"]["timeout_ms"] == 1000


def test_backends_and_mirrors_are_added_as_if_subscribed() -> None:
    """Services named as backends or mirrors come with identity and endpoints; unknown ones
    are listed as unknown."""
    rule = {
        "backends": [{"service": "catalog-v2", "weight": 10}, {"service": "catalog", "weight": 90}],
        "filters": {"mirror": {"service": "shadow.test"}},
    }
    view = mesh(
        [svc("catalog"), svc("catalog-v2"), svc("shadow", "test"), svc("nobody")],
        [route(rule), route({"backends": [{"service": "ghost"}]}, name="b")],
        {("default", "catalog-v2"): [EndpointInfo("127.0.0.1", 5002)],
         ("test", "shadow"): [EndpointInfo("127.0.0.1", 5003)]},
    )  # fmt: skip
    snapshot = build_snapshot("default", "web", ["catalog"], view)
    assert names(snapshot) == ["catalog.default", "catalog-v2.default", "shadow.test"]
    assert snapshot["outbound"]["unknown"] == ["ghost.default"]
    v2 = entry(snapshot, "catalog-v2")
    assert v2["identity"] == "spiffe://gossamer.local/ns/default/sa/catalog-v2"
    assert v2["endpoints"] == [{"address": "127.0.0.1", "port": 5002, "labels": {}}]
    assert entry(snapshot, "shadow", "test")["endpoints"][0]["port"] == 5003


def test_backends_are_followed_transitively() -> None:
    """A backend's own routes' backends are included too, so every entry is complete."""
    view = mesh(
        [svc("a"), svc("b"), svc("c")],
        [
            route({"backends": [{"service": "b"}]}, service="a", name="ra"),
            route({"backends": [{"service": "c"}]}, service="b", name="rb"),
            route({"backends": [{"service": "a"}]}, service="c", name="rc"),
        ],
    )
    assert names(build_snapshot("default", "web", ["a"], view)) == [
        "a.default",
        "b.default",
        "c.default",
    ]


def test_unrouted_services_stay_out() -> None:
    """Only what the subscriptions route to is added: other routed services stay out."""
    view = mesh(
        [svc("catalog"), svc("orders"), svc("payments")],
        [route({"backends": [{"service": "payments"}]}, service="orders", name="o")],
    )
    assert names(build_snapshot("default", "web", ["catalog"], view)) == ["catalog.default"]


def test_tcp_route_and_its_backends() -> None:
    """A TCP service's entry carries its route; the backends are in the snapshot."""
    view = mesh(
        [svc("db", ports=((5432, "tcp"),)), svc("db-blue", ports=((5432, "tcp"),)),
         svc("db-green", ports=((5433, "tcp"),))],
        [tcp(backends=[{"service": "db-green", "weight": 100}, {"service": "db-blue",
                                                                 "weight": 0}],
             drainTimeout="5s")],
    )  # fmt: skip
    snapshot = build_snapshot("default", "app", ["db"], view)
    assert names(snapshot) == ["db.default", "db-blue.default", "db-green.default"]
    item = entry(snapshot, "db")
    assert item["tcp_route"] == {
        "backends": [
            {"service": "db-green.default", "weight": 100},
            {"service": "db-blue.default", "weight": 0},
        ],
        "drain_ms": 5000,
    }
    assert item["ports"] == [{"port": 5432, "protocol": "tcp"}]


def test_inbound_rate_limit_only_for_the_services_own_proxies() -> None:
    """catalog's rate limit reaches catalog's own sidecars (inbound), not its callers."""
    view = mesh(
        [svc("catalog", ports=((8080, "http"), (9090, "grpc"))), svc("web")],
        [policy(rateLimit={"requestsPerSecond": 100, "burst": 200})],
    )
    own = build_snapshot("default", "catalog", [], view)
    assert own["inbound"] == {
        "mtls": "STRICT",
        "port_mtls": [],
        "ports": [{"port": 8080, "protocol": "http"}, {"port": 9090, "protocol": "grpc"}],
        "rate_limit": {"requests_per_second": 100, "burst": 200, "per_identity": False},
        "filters": [],
        "authorization": [],
        "request_authentication": [],
    }
    caller = build_snapshot("default", "web", ["catalog"], view)
    assert caller["inbound"]["rate_limit"] is None
    assert "rate_limit" not in entry(caller, "catalog")["policy"]


def test_selection_watches_referenced_services_known_or_not() -> None:
    """The watched set covers subscriptions and route targets, so their arrival re-pushes."""
    view = mesh(
        [svc("catalog")],
        [route({"backends": [{"service": "later"}, {"service": "catalog"}]})],
    )
    selection = select_services("default", "web", ["catalog", "nosuch"], view)
    assert selection.known == (("default", "catalog"),)
    assert selection.unknown == ("later.default", "nosuch.default")
    assert selection.watched == {
        ("default", "catalog"),
        ("default", "later"),
        ("default", "nosuch"),
    }
