"""Which workloads a security resource applies to: every workload of its namespace, or one
service of it (``selector: {service: orders}``)."""

from __future__ import annotations

from gossamer.config.base import SpecModel
from gossamer.config.traffic import ServiceRef, service_key

__all__ = ["Selector", "selected_service"]


class Selector(SpecModel):
    """``selector``: the one service (of the resource's namespace) it applies to."""

    service: ServiceRef


def selected_service(
    selector: Selector | None, namespace: str
) -> tuple[str, str] | None:
    """``(namespace, service)`` a resource of ``namespace`` with ``selector`` applies to; None
    for every workload of the namespace. A selector naming another namespace's service
    selects nothing: ``("", "")``, which no workload has."""
    if selector is None:
        return None
    key = service_key(selector.service, namespace)
    return key if key[0] == namespace else ("", "")
