"""The snapshot builder: subscriptions, name normalisation, identities, endpoints."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from gossamer.control.snapshots import (
    EndpointInfo,
    MeshView,
    ServiceInfo,
    build_snapshot,
    normalize_service_name,
)
from gossamer.snapshot_schema import TracingSnapshot


def view(
    services: Sequence[ServiceInfo] = (),
    endpoints: dict[tuple[str, str], list[EndpointInfo]] | None = None,
    workloads: frozenset[tuple[str, str]] = frozenset(),
    mtls: str = "STRICT",
) -> MeshView:
    return MeshView(
        trust_domain="gossamer.local",
        mtls_mode=mtls,
        services={(s.namespace, s.name): s for s in services},
        endpoints=endpoints or {},
        workload_services=workloads,
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("catalog", ("shop", "catalog")),
        ("catalog.default", ("default", "catalog")),
        ("catalog.default.svc", ("default", "catalog")),
        ("catalog.default.svc.cluster.local", ("default", "catalog")),
        ("Catalog", ("shop", "catalog")),
        ("a.b.c", None),
        ("bad_name", None),
    ],
)
def test_normalize_service_name(name: str, expected: tuple[str, str] | None) -> None:
    """All DNS spellings map to (namespace, name), the proxy's namespace by default."""
    assert normalize_service_name(name, "shop") == expected


def test_unknown_service_listed_as_name_namespace() -> None:
    """A subscription to nothing known goes to outbound.unknown as name.namespace."""
    snap = build_snapshot("default", "web", ["nosuch", "x.y.svc"], view())
    assert snap["outbound"]["services"] == []
    assert snap["outbound"]["unknown"] == ["nosuch.default", "x.y"]


def test_known_by_resource_without_endpoints() -> None:
    """A Service resource makes the name known even with no endpoints."""
    info = ServiceInfo("orders", "default", "orders-sa", "grpc", ports=((9000, "grpc"),))
    (entry,) = build_snapshot("default", "web", ["orders"], view([info]))["outbound"]["services"]
    assert entry == {
        "name": "orders",
        "namespace": "default",
        "identity": "spiffe://gossamer.local/ns/default/sa/orders-sa",
        "protocol": "grpc",
        "endpoints": [],
        "ports": [{"port": 9000, "protocol": "grpc"}],
        "http_routes": [],
        "policy": {
            "load_balancer": {"type": "PeakEWMA", "hash_header": None, "hash_cookie": None},
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
    }  # fmt: skip


def test_known_by_workload_only_uses_name_as_account() -> None:
    """A service with registered workloads but no resource: http, identity sa = name."""
    endpoints = {("default", "cat"): [EndpointInfo("127.0.0.1", 2000, {"v": "1"})]}
    snap = build_snapshot(
        "default", "web", ["cat"], view(endpoints=endpoints, workloads=frozenset(endpoints))
    )
    (entry,) = snap["outbound"]["services"]
    assert entry["identity"] == "spiffe://gossamer.local/ns/default/sa/cat"
    assert entry["endpoints"] == [{"address": "127.0.0.1", "port": 2000, "labels": {"v": "1"}}]


def test_calls_of_own_service_are_subscribed() -> None:
    """The proxy's Service spec.calls are in its snapshot without on-demand subscription."""
    web = ServiceInfo("web", "default", "web", calls=("orders", "pay.billing"))
    orders = ServiceInfo("orders", "default", "orders")
    snap = build_snapshot("default", "web", [], view([web, orders]))
    assert [s["name"] for s in snap["outbound"]["services"]] == ["orders"]
    assert snap["outbound"]["unknown"] == ["pay.billing"]


def test_only_subscribed_services_are_included() -> None:
    """Services the proxy did not subscribe to are absent."""
    services = [ServiceInfo(f"s{i}", "default", f"s{i}") for i in range(5)]
    snap = build_snapshot("default", "web", ["s3"], view(services))
    assert [s["name"] for s in snap["outbound"]["services"]] == ["s3"]


def test_proxy_section_and_mtls_mode() -> None:
    """The snapshot names the proxy's own identity and the mesh mTLS mode."""
    own = ServiceInfo("web", "shop", "frontend")
    snap = build_snapshot("shop", "web", [], view([own], mtls="PERMISSIVE"))
    assert snap["proxy"] == {
        "service": "web",
        "namespace": "shop",
        "identity": "spiffe://gossamer.local/ns/shop/sa/frontend",
    }
    assert snap["inbound"] == {
        "mtls": "PERMISSIVE",
        "port_mtls": [],
        "ports": [{"port": 80, "protocol": "http"}],
        "rate_limit": None,
        "filters": [],
        "authorization": [],
        "request_authentication": [],
    }
    assert snap["trust_domain"] == "gossamer.local"


def test_endpoints_are_sorted_for_stable_content() -> None:
    """Endpoint order does not depend on registration order."""
    key = ("default", "cat")
    a, b = EndpointInfo("127.0.0.1", 3000), EndpointInfo("127.0.0.1", 2000)
    one = build_snapshot(
        "default", "w", ["cat"], view(endpoints={key: [a, b]}, workloads=frozenset([key]))
    )
    two = build_snapshot(
        "default", "w", ["cat"], view(endpoints={key: [b, a]}, workloads=frozenset([key]))
    )
    assert one == two
    assert [e["port"] for e in one["outbound"]["services"][0]["endpoints"]] == [2000, 3000]


def test_a_services_sampling_takes_the_place_of_the_mesh_wide_one() -> None:
    """``Service.spec.tracing.samplingPercent`` is the ratio of its own sidecars' snapshots;
    other services keep the MeshConfig's, and without the MeshConfig's tracing there is
    none (no collector to send to)."""
    tracing: TracingSnapshot = {"endpoint": "http://collector:4318/v1/traces", "headers": [],
                                "ratio": 0.01, "max_queue": 2048, "batch": 512,
                                "interval": 1.0}  # fmt: skip
    services = {
        ("default", "web"): ServiceInfo("web", "default", "web", sampling_percent=50.0),
        ("default", "api"): ServiceInfo("api", "default", "api"),
    }
    view = MeshView("gossamer.local", "STRICT", services, {}, tracing=tracing)
    web = build_snapshot("default", "web", [], view)["tracing"]
    assert web is not None and web["ratio"] == 0.5
    assert {**web, "ratio": 0.01} == tracing and tracing["ratio"] == 0.01  # not modified
    assert build_snapshot("default", "api", [], view)["tracing"] == tracing
    untraced = MeshView("gossamer.local", "STRICT", services, {})
    assert build_snapshot("default", "web", [], untraced)["tracing"] is None


def test_a_services_sampling_is_a_percent() -> None:
    from pydantic import ValidationError

    from gossamer.config.service import ServiceSpec

    assert ServiceSpec.model_validate({"tracing": {"samplingPercent": 100}}).tracing is not None
    for bad in (-1, 100.5, "all"):
        with pytest.raises(ValidationError) as info:
            ServiceSpec.model_validate({"tracing": {"samplingPercent": bad}})
        assert info.value.errors()[0]["loc"][:2] == ("tracing", "samplingPercent")
