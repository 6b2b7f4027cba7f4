"""Document builders shared by the traffic-kind tests (HTTPRoute, TrafficPolicy, TCPRoute)."""

from __future__ import annotations

from typing import Any

import pytest

from gossamer.config import Problem, Resource, ValidationFailed, validate_documents

API = "gossamer.dev/v1alpha1"


def doc(
    kind: str, spec: dict[str, Any], name: str = "catalog", namespace: str | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": API, "kind": kind, "metadata": metadata, "spec": spec}


def route(*rules: dict[str, Any], service: str = "catalog", **meta: Any) -> dict[str, Any]:
    """An HTTPRoute for ``service`` with these rules (one empty rule when none given)."""
    spec = {"service": service, "rules": list(rules) or [{}]}
    return doc("HTTPRoute", spec, **meta)


def policy(service: str = "catalog", **spec: Any) -> dict[str, Any]:
    return doc("TrafficPolicy", {"service": service, **spec})


def tcp(service: str = "db", **spec: Any) -> dict[str, Any]:
    spec.setdefault("backends", [{"service": "db-blue"}])
    return doc("TCPRoute", {"service": service, **spec}, name=service)


def refusal(document: dict[str, Any]) -> Problem:
    """The single problem of an invalid document."""
    with pytest.raises(ValidationFailed) as caught:
        validate_documents([document])
    found = caught.value.problems
    assert len(found) == 1, found
    return found[0]


def accepted(document: dict[str, Any]) -> Resource:
    (resource,) = validate_documents([document])
    return resource
