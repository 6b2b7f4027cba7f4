"""The ``Service`` kind: a named set of workloads, its ports, identity and allowed callees."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field

from gossamer.config.base import DnsLabel, Resource, SpecModel

__all__ = ["PortProtocol", "Service", "ServicePort", "ServiceSpec", "check_service_ref"]

PortProtocol = Literal["http", "http2", "grpc", "tcp"]

_SERVICE_REF = re.compile(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$"
)


def check_service_ref(value: str) -> str:
    """Accept ``name`` or ``name.namespace`` (both DNS labels)."""
    if not _SERVICE_REF.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a service reference: expected 'name' or 'name.namespace' "
            "made of DNS labels"
        )
    return value


ServiceRef = Annotated[str, AfterValidator(check_service_ref)]


class ServicePort(SpecModel):
    """One port the service serves and the protocol spoken on it."""

    name: DnsLabel | None = None
    port: int = Field(ge=1, le=65535)
    protocol: PortProtocol = "http"


def _default_ports() -> list[ServicePort]:
    return [ServicePort(port=80)]


class ServiceTracing(SpecModel):
    """``spec.tracing`` of a Service: its sidecars' sampling, in place of the MeshConfig's
    ``samplingPercent`` (where the MeshConfig's ``spec.tracing`` turns tracing on)."""

    sampling_percent: float = Field(ge=0.0, le=100.0)


class ServiceSpec(SpecModel):
    """``spec`` of a Service."""

    ports: list[ServicePort] = Field(default_factory=_default_ports, min_length=1)
    service_account: DnsLabel | None = None
    calls: list[ServiceRef] = Field(default_factory=list)
    # Its sidecars' access log: on or off whatever the MeshConfig says (None: as it says).
    access_log: bool | None = None
    tracing: ServiceTracing | None = None  # None: the MeshConfig's sampling


class Service(Resource):
    """A service of the mesh. Its workloads run as ``serviceAccount`` (default: its name)."""

    KIND: ClassVar[str] = "Service"
    PLURAL: ClassVar[str] = "services"

    kind: Literal["Service"]
    spec: ServiceSpec = Field(default_factory=ServiceSpec)

    @property
    def service_account(self) -> str:
        return self.spec.service_account or self.metadata.name

    @property
    def protocol(self) -> str:
        """The protocol of the first port: what callers speak to this service by default."""
        return self.spec.ports[0].protocol

    def semantic_problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        seen_ports: dict[int, int] = {}
        seen_names: dict[str, int] = {}
        for index, port in enumerate(self.spec.ports):
            if port.port in seen_ports:
                problems.append(
                    (
                        f"spec.ports[{index}].port",
                        f"port {port.port} is already declared by spec.ports"
                        f"[{seen_ports[port.port]}]",
                    )
                )
            seen_ports.setdefault(port.port, index)
            if port.name is not None:
                if port.name in seen_names:
                    problems.append(
                        (
                            f"spec.ports[{index}].name",
                            f"port name {port.name!r} is already used by spec.ports"
                            f"[{seen_names[port.name]}]",
                        )
                    )
                seen_names.setdefault(port.name, index)
        return problems
