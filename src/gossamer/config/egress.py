"""The ``Egress`` kind: hosts outside the mesh that its workloads may call, and how the mesh
treats the others (with ``MeshConfig.spec.outboundTrafficPolicy``).

A request whose host is no mesh service leaves the mesh straight from the caller's sidecar
(plain HTTP to the host, its answer back; no mTLS: the host is not in the mesh):

- ``ALLOW_ANY`` (the default, as in Istio): any such host;
- ``REGISTRY_ONLY``: only hosts an ``Egress`` names; others are answered 403
  ``egress-denied``.

Hosts are DNS names (``api.example.com``), suffix wildcards (``*.example.com``: any name below
it) or IP addresses; ``ports`` limits them to those ports (empty: any). ``endpoints`` says
where they are served when not at their own name (static addresses, as an Istio
``ServiceEntry`` with ``resolution: STATIC``; each with a port, or the port asked for), in
either mode. Every ``Egress`` applies to every sidecar of the mesh. Calls that leave the mesh
are counted in the sidecar's metrics under ``dst_service="egress:<host>"``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field

from gossamer.config.base import Resource, SpecModel

__all__ = ["Egress", "EgressEndpoint", "EgressSpec", "check_egress_host"]

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")


def check_egress_host(value: str) -> str:
    """A lower-case DNS name, ``*.`` and a DNS name, or an IP address."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if len(value) > 253 or not _DNS.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a host: use a lower-case DNS name (api.example.com), "
            "*. and a DNS name (*.example.com), or an IP address"
        )
    return value


def check_endpoint_address(value: str) -> str:
    """An IP address or a lower-case DNS name (no wildcard)."""
    if value.startswith("*"):
        raise ValueError(f"{value!r}: an endpoint is one address, not a wildcard")
    return check_egress_host(value)


class EgressEndpoint(SpecModel):
    """Where an Egress's hosts are served: an address, and a port (none: the port asked)."""

    address: Annotated[str, AfterValidator(check_endpoint_address)]
    port: Annotated[int, Field(ge=1, le=65535)] | None = None


class EgressSpec(SpecModel):
    """``spec`` of an Egress."""

    hosts: list[Annotated[str, AfterValidator(check_egress_host)]] = Field(min_length=1)
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(default_factory=list)
    endpoints: list[EgressEndpoint] = Field(default_factory=list, max_length=64)


class Egress(Resource):
    """Hosts outside the mesh its workloads may call under ``REGISTRY_ONLY``."""

    KIND: ClassVar[str] = "Egress"
    PLURAL: ClassVar[str] = "egresses"

    kind: Literal["Egress"]
    spec: EgressSpec


OutboundTrafficMode = Literal["ALLOW_ANY", "REGISTRY_ONLY"]
