"""The control plane core without sockets: hello checks, pushes only on change, health."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gossamer.config import validate_documents
from gossamer.control.ca import CertificateAuthority
from gossamer.control.plane import ControlPlane, Refusal
from gossamer.control.settings import ControlSettings
from gossamer.control.store import Store
from gossamer.identity.spiffe import SpiffeId


class FakeSession:
    """Collects what the plane sends to one proxy."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed = False

    def send(self, message: Mapping[str, Any]) -> None:
        self.sent.append(dict(message))

    def close(self) -> None:
        self.closed = True

    def snapshots(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == "snapshot"]


def hello(service: str, proxy_id: str, port: int | None = None, subs: Any = ()) -> dict[str, Any]:
    return {
        "type": "hello",
        "proxy_id": proxy_id,
        "workload": {"service": service, "namespace": "default", "address": "127.0.0.1",
                     "inbound_port": port, "labels": {}},
        "subscriptions": list(subs),
    }  # fmt: skip


def ident(account: str) -> SpiffeId:
    return SpiffeId("gossamer.local", "default", account)


def service_doc(name: str, **spec: Any) -> list[Any]:
    return validate_documents(
        [{"apiVersion": "gossamer.dev/v1alpha1", "kind": "Service",
          "metadata": {"name": name}, "spec": spec}]
    )  # fmt: skip


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def run_with_plane(tmp_path: Path, body: Any, **settings: Any) -> None:
    """Run ``body(plane)`` with a control plane on ``tmp_path`` (its store and CA there;
    ``settings`` override ``ControlSettings``, the endpoint grace 0.05 s by default)."""
    settings.setdefault("endpoint_grace", 0.05)

    async def main() -> None:
        store = Store(tmp_path / "store.db")
        ca = CertificateAuthority.load_or_create(tmp_path)
        plane = ControlPlane(ControlSettings(data_dir=tmp_path, **settings), store, ca)
        await plane.start()
        try:
            await body(plane)
        finally:
            await plane.stop()
            store.close()

    asyncio.run(main())


def test_first_snapshot_after_hello(tmp_path: Path) -> None:
    """hello is answered with version 1 of the proxy's snapshot."""

    async def body(plane: ControlPlane) -> None:
        session = FakeSession()
        plane.hello(session, ident("web"), hello("web", "web-1"))
        await settle()
        (snap,) = session.snapshots()
        assert snap["version"] == 1 and snap["snapshot"]["version"] == 1

    run_with_plane(tmp_path, body)


def test_unrelated_change_pushes_nothing(tmp_path: Path) -> None:
    """Applying a Service the proxy does not use leaves its snapshot version alone."""

    async def body(plane: ControlPlane) -> None:
        session = FakeSession()
        plane.hello(session, ident("web"), hello("web", "web-1"))
        await settle()
        plane.apply(service_doc("elsewhere"))
        await settle()
        assert len(session.snapshots()) == 1

    run_with_plane(tmp_path, body)


def test_related_change_pushes_new_version(tmp_path: Path) -> None:
    """Adding spec.calls to the proxy's own Service pushes version 2."""

    async def body(plane: ControlPlane) -> None:
        session = FakeSession()
        plane.hello(session, ident("web"), hello("web", "web-1"))
        await settle()
        plane.apply(service_doc("web", calls=["orders"]))
        await settle()
        assert [s["version"] for s in session.snapshots()] == [1, 2]
        assert session.snapshots()[-1]["snapshot"]["outbound"]["unknown"] == ["orders.default"]

    run_with_plane(tmp_path, body)


def test_identity_must_match_service_account(tmp_path: Path) -> None:
    """A Service with serviceAccount 'shop' needs a cert for sa/shop."""

    async def body(plane: ControlPlane) -> None:
        plane.apply(service_doc("web", serviceAccount="shop"))
        with pytest.raises(Refusal) as caught:
            plane.hello(FakeSession(), ident("web"), hello("web", "web-1"))
        assert caught.value.code == "identity-mismatch"
        plane.hello(FakeSession(), ident("shop"), hello("web", "web-2"))

    run_with_plane(tmp_path, body)


def test_hello_without_certificate_is_refused(tmp_path: Path) -> None:
    """No peer identity, no hello."""

    async def body(plane: ControlPlane) -> None:
        with pytest.raises(Refusal) as caught:
            plane.hello(FakeSession(), None, hello("web", "web-1"))
        assert caught.value.code == "unauthenticated"

    run_with_plane(tmp_path, body)


def test_malformed_hello_is_bad_request(tmp_path: Path) -> None:
    """A hello with a wrong field type is refused as bad-request."""

    async def body(plane: ControlPlane) -> None:
        message = hello("web", "web-1")
        message["workload"]["inbound_port"] = "eighty"
        with pytest.raises(Refusal) as caught:
            plane.hello(FakeSession(), ident("web"), message)
        assert caught.value.code == "bad-request"

    run_with_plane(tmp_path, body)


def test_unhealthy_endpoint_leaves_and_returns(tmp_path: Path) -> None:
    """health false removes the endpoint from subscribers; health true brings it back."""

    async def body(plane: ControlPlane) -> None:
        front, back = FakeSession(), FakeSession()
        plane.hello(front, ident("web"), hello("web", "web-1", subs=["cat"]))
        record = plane.hello(back, ident("cat"), hello("cat", "cat-1", port=4000))
        await settle()

        def endpoints() -> list[Any]:
            services = front.snapshots()[-1]["snapshot"]["outbound"]["services"]
            return list(services[0]["endpoints"]) if services else []

        assert len(endpoints()) == 1
        plane.handle(record, {"type": "health", "healthy": False})
        await settle()
        assert endpoints() == []
        plane.handle(record, {"type": "health", "healthy": True})
        await settle()
        assert len(endpoints()) == 1

    run_with_plane(tmp_path, body)


def test_endpoint_expires_after_grace(tmp_path: Path) -> None:
    """A closed stream's endpoint stays for the grace period, then leaves."""

    async def body(plane: ControlPlane) -> None:
        front, back = FakeSession(), FakeSession()
        plane.hello(front, ident("web"), hello("web", "web-1", subs=["cat"]))
        record = plane.hello(back, ident("cat"), hello("cat", "cat-1", port=4000))
        await settle()
        plane.closed(record)
        await settle()
        assert plane.registry.get("cat-1") is not None
        await asyncio.sleep(0.15)
        await settle()
        assert plane.registry.get("cat-1") is None
        services = front.snapshots()[-1]["snapshot"]["outbound"]["services"]
        assert services == [] or services[0]["endpoints"] == []

    run_with_plane(tmp_path, body)


def test_ack_and_nack_states(tmp_path: Path) -> None:
    """ACK of the current version sets ACK; NACK records the error."""

    async def body(plane: ControlPlane) -> None:
        session = FakeSession()
        record = plane.hello(session, ident("web"), hello("web", "web-1"))
        await settle()
        assert record.ack_state == "PENDING"
        plane.handle(record, {"type": "ack", "version": 1})
        assert (record.ack_state, record.acked_version) == ("ACK", 1)
        plane.handle(record, {"type": "nack", "version": 1, "error": "nope"})
        assert (record.ack_state, record.nack_error) == ("NACK", "nope")

    run_with_plane(tmp_path, body)


def test_subscribe_without_change_resends_current(tmp_path: Path) -> None:
    """A subscribe that adds nothing still answers with the current snapshot version."""

    async def body(plane: ControlPlane) -> None:
        session = FakeSession()
        record = plane.hello(session, ident("web"), hello("web", "web-1", subs=["x"]))
        await settle()
        plane.handle(record, {"type": "subscribe", "services": ["x"]})
        assert [s["version"] for s in session.snapshots()] == [1, 1]

    run_with_plane(tmp_path, body)


def test_reconnect_keeps_versions_growing(tmp_path: Path) -> None:
    """A proxy that reconnects gets a higher version than before."""

    async def body(plane: ControlPlane) -> None:
        first, second = FakeSession(), FakeSession()
        record = plane.hello(first, ident("web"), hello("web", "web-1"))
        await settle()
        plane.closed(record)
        plane.hello(second, ident("web"), hello("web", "web-1"))
        await settle()
        assert second.snapshots()[0]["version"] == first.snapshots()[-1]["version"] + 1

    run_with_plane(tmp_path, body)


def test_new_endpoint_pushes_only_to_its_watchers(tmp_path: Path) -> None:
    """A second endpoint of cat pushes a new version to the proxy subscribed to cat and
    nothing to a proxy that does not use cat."""

    async def body(plane: ControlPlane) -> None:
        watcher, bystander = FakeSession(), FakeSession()
        plane.hello(watcher, ident("web"), hello("web", "web-1", subs=["cat"]))
        plane.hello(bystander, ident("dog"), hello("dog", "dog-1"))
        plane.hello(FakeSession(), ident("cat"), hello("cat", "cat-1", port=4000))
        await settle()
        before_watcher, before_bystander = len(watcher.snapshots()), len(bystander.snapshots())
        plane.hello(FakeSession(), ident("cat"), hello("cat", "cat-2", port=4001))
        await settle()
        assert len(bystander.snapshots()) == before_bystander
        assert len(watcher.snapshots()) == before_watcher + 1
        endpoints = watcher.snapshots()[-1]["snapshot"]["outbound"]["services"][0]["endpoints"]
        assert [e["port"] for e in endpoints] == [4000, 4001]

    run_with_plane(tmp_path, body)


def test_hello_with_a_newline_in_its_service_name_is_refused_cleanly(tmp_path: Path) -> None:
    """Issue 11, lows: ``"web\\n"`` passed the DNS-label check (``$`` before a final
    newline) and the hello died with a traceback building the identity; now it is a
    bad-request refusal naming the field."""

    async def body(plane: ControlPlane) -> None:
        for bad in ("web\n", "web\r\n", "we b"):
            message = hello("web", "web-1")
            message["workload"]["service"] = bad
            with pytest.raises(Refusal) as caught:
                plane.hello(FakeSession(), ident("web"), message)
            assert caught.value.code == "bad-request"
            assert "workload" in caught.value.message

    run_with_plane(tmp_path, body)


def test_a_route_to_nothing_is_applied_with_warnings(tmp_path: Path) -> None:
    """Issue 12, item 9: an HTTPRoute to a service the mesh does not know, or to a subset no
    endpoint carries, was applied silently and answered 503 no-healthy-endpoints later; it is
    still applied (it may be deployed next) but the apply says what it points at."""
    route = validate_documents([{
        "apiVersion": "gossamer.dev/v1alpha1", "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {"service": "cat", "rules": [{"backends": [
            {"service": "cat", "subset": {"version": "v3"}},
            {"service": "nosuch"},
        ]}]},
    }])  # fmt: skip

    async def body(plane: ControlPlane) -> None:
        plane.hello(FakeSession(), ident("cat"), hello("cat", "cat-1", port=4000))
        plane.apply(route)
        warnings = [(w.path, w.message) for w in plane.route_warnings(route)]
        assert warnings == [
            ("spec.rules[0].backends[0].subset", "no endpoint of cat is labelled version=v3"),
            ("spec.rules[0].backends[1].service", "no service nosuch.default is known yet"),
        ]

    run_with_plane(tmp_path, body)
