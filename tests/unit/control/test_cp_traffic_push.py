"""Pushes for traffic resources: only proxies whose snapshot changes get a new version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gossamer.config import ResourceKey, validate_documents
from gossamer.control.plane import ControlPlane
from tests.unit.config.traffic_docs import policy, route, tcp
from tests.unit.control.test_cp_plane import (
    FakeSession,
    hello,
    ident,
    run_with_plane,
    service_doc,
    settle,
)

SPLIT = {
    "backends": [
        {"service": "catalog", "subset": {"version": "v1"}, "weight": 90},
        {"service": "catalog", "subset": {"version": "v2"}, "weight": 10},
    ]
}


def versions(session: FakeSession) -> list[int]:
    return [int(s["version"]) for s in session.snapshots()]


def last(session: FakeSession) -> dict[str, Any]:
    return dict(session.snapshots()[-1]["snapshot"])


def service_entry(session: FakeSession, name: str) -> dict[str, Any] | None:
    for item in last(session)["outbound"]["services"]:
        if item["name"] == name:
            return dict(item)
    return None


def test_httproute_pushes_only_to_subscribers_of_its_service(tmp_path: Path) -> None:
    """An HTTPRoute for catalog re-pushes to catalog's caller, not to catalog's own proxy
    (its snapshot does not change) nor to an unrelated proxy."""

    async def body(plane: ControlPlane) -> None:
        plane.apply(service_doc("catalog"))
        caller, own, other = FakeSession(), FakeSession(), FakeSession()
        plane.hello(caller, ident("web"), hello("web", "web-1", subs=["catalog"]))
        plane.hello(own, ident("catalog"), hello("catalog", "catalog-1", port=4000))
        plane.hello(other, ident("misc"), hello("misc", "misc-1", subs=["orders"]))
        await settle()
        before = (len(caller.snapshots()), len(own.snapshots()), len(other.snapshots()))
        plane.apply(validate_documents([route(SPLIT)]))
        await settle()
        assert len(caller.snapshots()) == before[0] + 1
        assert (len(own.snapshots()), len(other.snapshots())) == before[1:]
        catalog = service_entry(caller, "catalog")
        assert catalog is not None
        assert [b["weight"] for b in catalog["http_routes"][0]["backends"]] == [90, 10]

    run_with_plane(tmp_path, body)


def test_rate_limit_pushes_to_the_services_own_proxy(tmp_path: Path) -> None:
    """A TrafficPolicy with a rate limit reaches catalog's own proxy (inbound) and its caller
    (policy), not an unrelated proxy."""

    async def body(plane: ControlPlane) -> None:
        caller, own, other = FakeSession(), FakeSession(), FakeSession()
        plane.hello(caller, ident("web"), hello("web", "web-1", subs=["catalog"]))
        plane.hello(own, ident("catalog"), hello("catalog", "catalog-1", port=4000))
        plane.hello(other, ident("misc"), hello("misc", "misc-1"))
        await settle()
        counts = [len(s.snapshots()) for s in (caller, own, other)]
        limit = {"requestsPerSecond": 5, "burst": 10, "perIdentity": True}
        plane.apply(validate_documents([policy(rateLimit=limit, timeout="2s")]))
        await settle()
        assert [len(s.snapshots()) for s in (caller, own, other)] == [
            counts[0] + 1,
            counts[1] + 1,
            counts[2],
        ]
        assert last(own)["inbound"]["rate_limit"] == {
            "requests_per_second": 5,
            "burst": 10,
            "per_identity": True,
        }
        assert last(caller)["inbound"]["rate_limit"] is None
        catalog = service_entry(caller, "catalog")
        assert catalog is not None and catalog["policy"]["timeout_ms"] == 2000

    run_with_plane(tmp_path, body)


def test_backend_endpoint_arrival_repushes_the_routed_services_caller(tmp_path: Path) -> None:
    """A route target is watched: when its first endpoint registers, the caller is re-pushed
    with the backend service and that endpoint."""

    async def body(plane: ControlPlane) -> None:
        plane.apply(service_doc("catalog"))
        rule = {"backends": [{"service": "catalog-next", "weight": 1}]}
        plane.apply(validate_documents([route(rule)]))
        caller = FakeSession()
        plane.hello(caller, ident("web"), hello("web", "web-1", subs=["catalog"]))
        await settle()
        assert last(caller)["outbound"]["unknown"] == ["catalog-next.default"]
        plane.hello(FakeSession(), ident("catalog-next"),
                    hello("catalog-next", "next-1", port=4100))  # fmt: skip
        await settle()
        backend = service_entry(caller, "catalog-next")
        assert backend is not None
        assert backend["endpoints"] == [{"address": "127.0.0.1", "port": 4100, "labels": {}}]
        assert last(caller)["outbound"]["unknown"] == []

    run_with_plane(tmp_path, body)


def test_tcp_route_change_and_delete_push_new_versions(tmp_path: Path) -> None:
    """Switching a TCPRoute's backend and then deleting the route each push once."""

    async def body(plane: ControlPlane) -> None:
        plane.apply(service_doc("db", ports=[{"port": 5432, "protocol": "tcp"}]))
        app = FakeSession()
        plane.hello(app, ident("app"), hello("app", "app-1", subs=["db"]))
        await settle()
        plane.apply(validate_documents([tcp(backends=[{"service": "db-blue"}])]))
        await settle()
        plane.apply(validate_documents([tcp(backends=[{"service": "db-green"}])]))
        await settle()
        db = service_entry(app, "db")
        assert db is not None and db["tcp_route"] == {
            "backends": [{"service": "db-green.default", "weight": 1}],
            "drain_ms": 30000,
        }
        plane.delete(ResourceKey("TCPRoute", "default", "db"))
        await settle()
        db = service_entry(app, "db")
        assert db is not None and db["tcp_route"] is None
        assert versions(app) == [1, 2, 3, 4]

    run_with_plane(tmp_path, body)


def test_reapplying_the_same_route_pushes_nothing(tmp_path: Path) -> None:
    """An unchanged re-apply neither changes the store nor pushes."""

    async def body(plane: ControlPlane) -> None:
        caller = FakeSession()
        plane.hello(caller, ident("web"), hello("web", "web-1", subs=["catalog"]))
        plane.apply(service_doc("catalog"))
        plane.apply(validate_documents([route(SPLIT)]))
        await settle()
        count = len(caller.snapshots())
        results = plane.apply(validate_documents([route(SPLIT)]))
        await settle()
        assert results[0].action == "unchanged"
        assert len(caller.snapshots()) == count

    run_with_plane(tmp_path, body)
