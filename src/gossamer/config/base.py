"""The shape every resource shares: ``apiVersion``, ``kind``, ``metadata``, ``spec``.

A kind is one module that subclasses :class:`Resource` (setting ``kind`` to a ``Literal`` and
``spec`` to its spec model) plus one entry in :mod:`gossamer.config.kinds`. Spec models derive
from :class:`SpecModel`: strict types, unknown fields refused, camelCase field names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = [
    "API_VERSION",
    "RESERVED_NAMESPACE",
    "DnsLabel",
    "LabelMap",
    "Metadata",
    "Resource",
    "ResourceKey",
    "SpecModel",
    "check_dns_label",
    "check_labels",
    "check_workload_namespace",
]

API_VERSION = "gossamer.dev/v1alpha1"
# The control plane's own namespace: its identity there (sa/control-plane) is the one sidecars
# trust as the control plane, so no resource and no workload may live in it.
RESERVED_NAMESPACE = "gossamer-system"

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")


def check_dns_label(value: str) -> str:
    """Accept a DNS label (lowercase letters, digits and '-', at most 63, alnum at both ends)."""
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a DNS label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return value


def check_workload_namespace(value: str) -> str:
    """A namespace workloads and resources may use: a DNS label other than the reserved one."""
    check_dns_label(value)
    if value == RESERVED_NAMESPACE:
        raise ValueError(f"{value!r} is reserved for the control plane")
    return value


def check_labels(value: dict[str, str]) -> dict[str, str]:
    """Accept a label map: Kubernetes-style keys (optional DNS prefix) and values."""
    for key, item in value.items():
        if not _LABEL_KEY.fullmatch(key):
            raise ValueError(f"invalid label key {key!r}")
        if not _LABEL_VALUE.fullmatch(item):
            raise ValueError(f"invalid value {item!r} for label {key!r}")
    return value


DnsLabel = Annotated[str, AfterValidator(check_dns_label)]
LabelMap = Annotated[dict[str, str], AfterValidator(check_labels)]


@dataclass(frozen=True, slots=True, order=True)
class ResourceKey:
    """Identifies one stored resource: (kind, namespace, name)."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


class SpecModel(BaseModel):
    """Base of spec models: strict types, unknown fields refused, camelCase names."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, alias_generator=to_camel)


class Metadata(BaseModel):
    """``metadata``: name, namespace, labels; ``revision``/``generation`` are set by the store."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: DnsLabel
    namespace: Annotated[str, AfterValidator(check_workload_namespace)] = "default"
    labels: LabelMap = Field(default_factory=dict)
    revision: int | None = Field(default=None, ge=0)
    generation: int | None = Field(default=None, ge=0)


class Resource(BaseModel):
    """One validated document. Subclasses fix ``kind`` and ``spec``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""
    # A cluster-wide kind lives in this one namespace whatever the document says.
    FIXED_NAMESPACE: ClassVar[str | None] = None

    api_version: Literal["gossamer.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: str
    metadata: Metadata

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)

    def to_document(self) -> dict[str, Any]:
        """The canonical document (defaults filled in, no store bookkeeping fields)."""
        return self.model_dump(
            mode="json",
            by_alias=True,
            exclude={"metadata": {"revision", "generation"}},
        )

    def semantic_problems(self) -> list[tuple[str, str]]:
        """Problems across fields that the field types cannot see: ``(path, message)``."""
        return []
