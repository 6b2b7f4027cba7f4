"""A control plane restarted on the same store starts from the proxies the last one knew
(issue 12, item 1): no snapshot drops an endpoint it has not seen go, and config versions
keep growing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gossamer.control.plane import ControlPlane
from tests.unit.control.test_cp_plane import FakeSession, hello, ident, run_with_plane, settle


def _run(tmp_path: Path, body: Any, restore_grace: float = 30.0) -> None:
    run_with_plane(tmp_path, body, restore_grace=restore_grace)


def _endpoints(session: FakeSession) -> list[Any]:
    services = session.snapshots()[-1]["snapshot"]["outbound"]["services"]
    return list(services[0]["endpoints"]) if services else []


async def _first_life(plane: ControlPlane) -> None:
    plane.hello(FakeSession(), ident("cat"), hello("cat", "cat-1", port=4000))
    plane.hello(FakeSession(), ident("cat"), hello("cat", "cat-2", port=4001))
    await settle()  # killed here: stop() saves, and so does the loop within a second


def test_a_restarted_control_plane_keeps_the_endpoints_it_has_not_seen_go(
    tmp_path: Path,
) -> None:
    """Before: the new control plane answered the first caller with no endpoint at all."""
    _run(tmp_path, _first_life)

    async def second_life(plane: ControlPlane) -> None:
        front = FakeSession()
        plane.hello(front, ident("web"), hello("web", "web-1", subs=["cat"]))
        await settle()
        assert sorted(e["port"] for e in _endpoints(front)) == [4000, 4001]
        plane.hello(FakeSession(), ident("cat"), hello("cat", "cat-1", port=4000))  # back
        await settle()
        assert sorted(e["port"] for e in _endpoints(front)) == [4000, 4001]

    _run(tmp_path, second_life)


def test_restored_proxies_that_do_not_return_leave_after_the_grace(tmp_path: Path) -> None:
    _run(tmp_path, _first_life)

    async def second_life(plane: ControlPlane) -> None:
        front = FakeSession()
        plane.hello(front, ident("web"), hello("web", "web-1", subs=["cat"]))
        plane.hello(FakeSession(), ident("cat"), hello("cat", "cat-2", port=4001))
        await asyncio.sleep(0.3)
        await settle()
        assert [e["port"] for e in _endpoints(front)] == [4001]  # cat-1 never came back
        assert plane.registry.get("cat-1") is None

    _run(tmp_path, second_life, restore_grace=0.1)


def test_config_versions_keep_growing_across_restarts(tmp_path: Path) -> None:
    """A sidecar's hello says the last version it applied; the next is above it."""

    async def life(plane: ControlPlane) -> None:
        session = FakeSession()
        message = hello("web", "web-1")
        message["config_version"] = 41
        plane.hello(session, ident("web"), message)
        await settle()
        assert session.snapshots()[-1]["version"] == 42

    _run(tmp_path, life)


def test_a_proxy_that_left_is_forgotten_at_once_and_not_restored(tmp_path: Path) -> None:
    """A sidecar that says ``leave`` (it is shutting down) leaves callers' snapshots at once
    and is forgotten when its stream closes, grace or not; a restarted control plane does not
    wait for it (before: it came back as a PENDING proxy for the restore grace)."""

    async def first_life(plane: ControlPlane) -> None:
        front = FakeSession()
        plane.hello(front, ident("web"), hello("web", "web-1", subs=["cat"]))
        leaving = plane.hello(FakeSession(), ident("cat"), hello("cat", "cat-1", port=4000))
        plane.hello(FakeSession(), ident("cat"), hello("cat", "cat-2", port=4001))
        await settle()
        assert sorted(e["port"] for e in _endpoints(front)) == [4000, 4001]
        plane.handle(leaving, {"type": "leave"})
        await settle()
        assert [e["port"] for e in _endpoints(front)] == [4001]  # while it drains
        plane.handle(leaving, {"type": "health", "healthy": True})  # its app's probe, then
        await settle()
        assert [e["port"] for e in _endpoints(front)] == [4001]  # it does not come back
        plane.closed(leaving)
        assert plane.registry.get("cat-1") is None  # no grace for one that said it left

    run_with_plane(tmp_path, first_life, endpoint_grace=30.0)

    async def second_life(plane: ControlPlane) -> None:
        assert plane.registry.get("cat-1") is None
        assert plane.registry.get("cat-2") is not None  # restored: it did not say it left

    _run(tmp_path, second_life)
