"""TCPRoute: refusals with their paths and the snapshot form."""

from __future__ import annotations

from typing import Any

import pytest

from gossamer.config import TCPRoute
from tests.unit.config.traffic_docs import accepted, refusal, tcp


@pytest.mark.parametrize(
    ("spec", "path", "fragment"),
    [
        ({"backends": []}, "spec.backends", "at least 1"),
        ({"backends": [{"service": "db-blue", "weight": 10001}]}, "spec.backends[0].weight",
         "10000"),
        ({"backends": [{"service": "db_blue"}]}, "spec.backends[0].service",
         "not a service reference"),
        ({"backends": [{"service": "db-blue", "subset": {"v": "1"}}]},
         "spec.backends[0].subset", "unknown field"),
        ({"drainTimeout": "soon"}, "spec.drainTimeout", "invalid duration"),
        ({"drainTimeout": 30}, "spec.drainTimeout", "string"),
    ],
    ids=["no-backends", "weight", "service-ref", "subset", "drain-text", "drain-number"],
)  # fmt: skip
def test_field_refusal_names_its_path(spec: dict[str, Any], path: str, fragment: str) -> None:
    """A bad field is refused at its exact path."""
    problem = refusal(tcp(**spec))
    assert (problem.kind, problem.path) == ("TCPRoute", path)
    assert fragment in problem.message


def test_all_weights_zero_is_refused() -> None:
    """At least one backend needs a positive weight."""
    problem = refusal(tcp(backends=[{"service": "db-blue", "weight": 0}]))
    assert problem.path == "spec.backends"


def test_same_backend_twice_is_refused() -> None:
    """'db-blue' and 'db-blue.default' are the same backend; the repeat is refused."""
    backends = [{"service": "db-blue"}, {"service": "db-green"}, {"service": "db-blue.default"}]
    problem = refusal(tcp(backends=backends))
    assert problem.path == "spec.backends[2].service"


def test_snapshot_form() -> None:
    """Backends qualified as name.namespace, drain in ms (default 30 s)."""
    resource = accepted(tcp(backends=[{"service": "db-blue", "weight": 100},
                                      {"service": "db-green.other", "weight": 0}]))  # fmt: skip
    assert isinstance(resource, TCPRoute)
    assert resource.to_snapshot() == {
        "backends": [
            {"service": "db-blue.default", "weight": 100},
            {"service": "db-green.other", "weight": 0},
        ],
        "drain_ms": 30000,
    }
    assert resource.references() == {("default", "db-blue"), ("other", "db-green")}


def test_zero_drain_closes_at_once() -> None:
    """drainTimeout 0s is accepted: old connections are closed as soon as the route changes."""
    resource = accepted(tcp(drainTimeout="0s"))
    assert isinstance(resource, TCPRoute)
    assert resource.to_snapshot()["drain_ms"] == 0
