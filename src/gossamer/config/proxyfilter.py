"""The ``ProxyFilter`` kind: a user's Python filter (``gossamer.filters``) run by the sidecars
of one service, on requests to it (``inbound``) or from it (``outbound``).

The filter is named, never shipped: ``filter`` is ``module:attribute`` importable in the
sidecar's environment, or the name of an entry point in the ``gossamer.filters`` group of an
installed package. ``config`` is any JSON object (at most 64 KiB) handed to the filter. A
sidecar that cannot load or make the filter refuses the config (NACK) and keeps its last good
one; ``gossamer get proxies`` shows the error. Filters of one service and direction run in
``priority`` order (lower first), then by name.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field

from gossamer.config.base import Resource, SpecModel
from gossamer.config.traffic import ServiceRef, service_key
from gossamer.snapshot_schema import FilterSnapshot

__all__ = ["ProxyFilter", "ProxyFilterSpec"]

MAX_CONFIG_BYTES = 64 * 1024
_REFERENCE = re.compile(
    r"^(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:"
    r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
    r"|[A-Za-z0-9][A-Za-z0-9._-]{0,99})$"
)


def _check_reference(value: str) -> str:
    if not _REFERENCE.fullmatch(value):
        raise ValueError(
            f"{value!r} names no filter: use module:attribute (e.g. tenant_filter:TenantFilter)"
            " or the name of an entry point in the gossamer.filters group"
        )
    return value


def _check_config(value: dict[str, Any]) -> dict[str, Any]:
    _text_keys(value)
    if len(json.dumps(value)) > MAX_CONFIG_BYTES:
        raise ValueError(f"config is over {MAX_CONFIG_BYTES // 1024} KiB as JSON")
    return value


def _text_keys(value: Any) -> None:
    """Every mapping key in the config is text: YAML reads ``on:``, ``yes:``, ``true:`` as a
    boolean, which JSON would store as another key than the one written."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, list):
            stack += [(child, f"{where}[{i}]") for i, child in enumerate(item)]
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ValueError(
                        f"key {key!r} at config{where} is not text (YAML reads on, yes and "
                        "true as booleans): quote it"
                    )
                stack.append((child, f"{where}.{key}"))


class ProxyFilterSpec(SpecModel):
    """``spec`` of a ProxyFilter."""

    service: ServiceRef
    direction: Literal["inbound", "outbound"] = "inbound"
    filter: Annotated[str, AfterValidator(_check_reference)]
    config: Annotated[dict[str, Any], AfterValidator(_check_config)] = Field(
        default_factory=dict
    )
    priority: int = Field(default=0, ge=-1000, le=1000)
    failure: Literal["reject", "allow"] = "reject"


class ProxyFilter(Resource):
    """A user's filter, named in config and installed where the sidecars run."""

    KIND: ClassVar[str] = "ProxyFilter"
    PLURAL: ClassVar[str] = "proxyfilters"

    kind: Literal["ProxyFilter"]
    spec: ProxyFilterSpec

    @property
    def service_key(self) -> tuple[str, str]:
        """``(namespace, name)`` of the service whose sidecars run the filter."""
        return service_key(self.spec.service, self.metadata.namespace)

    @property
    def order(self) -> tuple[int, str, str]:
        return (self.spec.priority, self.metadata.namespace, self.metadata.name)

    def to_snapshot(self) -> FilterSnapshot:
        return {
            "name": f"{self.metadata.namespace}/{self.metadata.name}",
            "filter": self.spec.filter,
            "config": dict(self.spec.config),
            "failure": self.spec.failure,
        }
