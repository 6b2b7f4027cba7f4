"""The ``PeerAuthentication`` kind: how a workload's sidecar takes connections from its
callers, for a namespace, one service, or one port of it; the most specific wins.

- ``STRICT``: mutual TLS from the mesh only; plaintext is refused (400 ``mtls-required``);
- ``PERMISSIVE``: mutual TLS from the mesh, and plaintext from outside it (no identity);
- ``DISABLE``: plaintext: callers' sidecars send plain HTTP there (no mTLS, no identity),
  for an app that must be reached as if the mesh were not there;
- ``UNSET`` (or left out): what the level above says.

Levels, least specific first: the mesh (``MeshConfig.spec.mtls.mode``), a PeerAuthentication
without ``selector`` (every workload of its namespace), one with ``selector: {service: ...}``
(that service's workloads), and its ``portLevelMtls`` (one port of them: the port a caller
names in its authority, 80 when none). Of several resources at one level, the first in name
order applies. The TCP relay stays mutual TLS whatever the mode (its port is never
plaintext).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from gossamer.config.base import Resource, SpecModel
from gossamer.config.selector import Selector

__all__ = ["PeerAuthentication", "PeerAuthenticationSpec", "PeerMtlsMode"]

PeerMtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE", "UNSET"]


def _check_port(value: str) -> str:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"{value!r} is not a port number (1-65535)")
    return value


class PeerMtls(SpecModel):
    mode: PeerMtlsMode = "UNSET"


class PeerAuthenticationSpec(SpecModel):
    """``spec`` of a PeerAuthentication."""

    selector: Selector | None = None
    mtls: PeerMtls = Field(default_factory=PeerMtls)
    port_level_mtls: dict[Annotated[str, AfterValidator(_check_port)], PeerMtls] = Field(
        default_factory=dict, max_length=64
    )

    @model_validator(mode="after")
    def _ports_need_a_service(self) -> PeerAuthenticationSpec:
        if self.port_level_mtls and self.selector is None:
            raise ValueError("portLevelMtls needs a selector: ports belong to one service")
        return self


class PeerAuthentication(Resource):
    """How the workloads of a namespace or of one service take connections."""

    KIND: ClassVar[str] = "PeerAuthentication"
    PLURAL: ClassVar[str] = "peerauthentications"

    kind: Literal["PeerAuthentication"]
    spec: PeerAuthenticationSpec
