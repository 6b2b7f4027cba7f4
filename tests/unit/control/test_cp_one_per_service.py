"""TrafficPolicy and TCPRoute exist once per service: a second one is refused at apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gossamer.config import ValidationFailed, validate_documents
from gossamer.control.plane import ControlPlane
from tests.unit.config.traffic_docs import doc, policy, tcp
from tests.unit.control.test_cp_plane import run_with_plane


def named_policy(name: str, service: str = "catalog") -> dict[str, Any]:
    return doc("TrafficPolicy", {"service": service, "timeout": "1s"}, name=name)


def test_second_policy_for_a_service_is_refused_with_its_path(tmp_path: Path) -> None:
    """Applying policy b for catalog while policy a targets it fails at spec.service."""

    async def body(plane: ControlPlane) -> None:
        plane.apply(validate_documents([named_policy("a")]))
        with pytest.raises(ValidationFailed) as caught:
            plane.apply(validate_documents([named_policy("b", "catalog.default")]))
        [problem] = caught.value.problems
        assert (problem.kind, problem.name, problem.path) == ("TrafficPolicy", "b", "spec.service")
        assert "default/a" in problem.message
        names = [d["metadata"]["name"] for d in plane.store.list_resources("TrafficPolicy")]
        assert names == ["a"]

    run_with_plane(tmp_path, body)


def test_reapplying_or_replacing_the_same_policy_is_fine(tmp_path: Path) -> None:
    """The owner itself may be changed, and a batch may move a service to a new name."""

    async def body(plane: ControlPlane) -> None:
        plane.apply(validate_documents([named_policy("a")]))
        plane.apply(validate_documents([named_policy("a")]))
        plane.apply(validate_documents([policy("orders")]))

    run_with_plane(tmp_path, body)


def test_two_tcp_routes_in_one_batch_are_refused(tmp_path: Path) -> None:
    """Within one apply, the second TCPRoute for db is refused and nothing is stored."""
    first = tcp("db")
    second = doc("TCPRoute", {"service": "db", "backends": [{"service": "db-green"}]}, name="db2")

    async def body(plane: ControlPlane) -> None:
        with pytest.raises(ValidationFailed) as caught:
            plane.apply(validate_documents([first, second]))
        assert [p.document for p in caught.value.problems] == [1]
        assert plane.store.list_resources("TCPRoute", None) == []

    run_with_plane(tmp_path, body)
