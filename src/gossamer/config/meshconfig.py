"""The ``MeshConfig`` kind: mesh-wide settings (mTLS mode, certificate lifetime).

There is exactly one, named ``default``. It is cluster-wide: whatever namespace a document
names, it is stored in namespace ``default`` (so ``GET /v1/resources/meshconfig/default/default``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from gossamer.config.base import Resource, SpecModel
from gossamer.config.duration import parse_duration

__all__ = [
    "MAX_CERT_LIFETIME",
    "MIN_CERT_LIFETIME",
    "CertificateSettings",
    "MeshConfig",
    "MeshConfigSpec",
    "MtlsMode",
    "MtlsSettings",
]

MtlsMode = Literal["STRICT", "PERMISSIVE"]
MIN_CERT_LIFETIME = timedelta(seconds=10)
MAX_CERT_LIFETIME = timedelta(days=90)
MESH_CONFIG_NAME = "default"
MESH_CONFIG_NAMESPACE = "default"


def _check_lifetime(value: str) -> str:
    lifetime = parse_duration(value)
    if not MIN_CERT_LIFETIME <= lifetime <= MAX_CERT_LIFETIME:
        raise ValueError(f"certificate lifetime {value!r} must be between 10s and 90d")
    return value


CertLifetime = Annotated[str, AfterValidator(_check_lifetime)]


class MtlsSettings(SpecModel):
    """``spec.mtls``: STRICT refuses plaintext on inbound; PERMISSIVE accepts both."""

    mode: MtlsMode = "STRICT"


class CertificateSettings(SpecModel):
    """``spec.certificates``: lifetime of workload certificates (unset: control plane default)."""

    lifetime: CertLifetime | None = None


class OutboundTrafficPolicy(SpecModel):
    """``spec.outboundTrafficPolicy``: which hosts outside the mesh its workloads may call
    (``gossamer.config.egress``): any (``ALLOW_ANY``) or those an Egress names."""

    mode: Literal["ALLOW_ANY", "REGISTRY_ONLY"] = "ALLOW_ANY"


class MeshConfigSpec(SpecModel):
    """``spec`` of the MeshConfig."""

    mtls: MtlsSettings = Field(default_factory=MtlsSettings)
    certificates: CertificateSettings = Field(default_factory=CertificateSettings)
    outbound_traffic_policy: OutboundTrafficPolicy = Field(default_factory=OutboundTrafficPolicy)


class MeshConfig(Resource):
    """The mesh-wide configuration (only ``metadata.name: default``)."""

    KIND: ClassVar[str] = "MeshConfig"
    PLURAL: ClassVar[str] = "meshconfigs"
    FIXED_NAMESPACE: ClassVar[str | None] = MESH_CONFIG_NAMESPACE

    kind: Literal["MeshConfig"]
    spec: MeshConfigSpec = Field(default_factory=MeshConfigSpec)

    @model_validator(mode="before")
    @classmethod
    def _force_namespace(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("metadata"), dict):
            metadata = dict(data["metadata"])
            metadata["namespace"] = MESH_CONFIG_NAMESPACE
            data = {**data, "metadata": metadata}
        return data

    @property
    def certificate_lifetime(self) -> timedelta | None:
        lifetime = self.spec.certificates.lifetime
        return parse_duration(lifetime) if lifetime is not None else None

    def semantic_problems(self) -> list[tuple[str, str]]:
        if self.metadata.name != MESH_CONFIG_NAME:
            return [
                (
                    "metadata.name",
                    f"the MeshConfig must be named {MESH_CONFIG_NAME!r} "
                    f"(got {self.metadata.name!r})",
                )
            ]
        return []
