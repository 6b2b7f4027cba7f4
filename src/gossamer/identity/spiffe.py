"""SPIFFE identities: the one value type every part of Gossamer uses for "who is this workload".

A Gossamer workload identity is ``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``.
Parsing is strict: anything else is refused with a ``ValueError`` that says why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_TRUST_DOMAIN", "SpiffeId", "peer_uri_sans"]

DEFAULT_TRUST_DOMAIN = "gossamer.local"

# Trust domains are DNS-like labels; names are Kubernetes-style DNS labels.
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.\-_]{0,253}[a-z0-9])?$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A workload identity in the ``/ns/<namespace>/sa/<service-account>`` shape."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN.fullmatch(self.trust_domain):
            raise ValueError(f"invalid trust domain {self.trust_domain!r}")
        if not _NAME.fullmatch(self.namespace):
            raise ValueError(f"invalid namespace {self.namespace!r}")
        if not _NAME.fullmatch(self.service_account):
            raise ValueError(f"invalid service account {self.service_account!r}")

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse ``spiffe://td/ns/NS/sa/SA``; raise ``ValueError`` naming what is wrong."""
        prefix = "spiffe://"
        if not uri.startswith(prefix):
            raise ValueError(f"not a SPIFFE ID (must start with spiffe://): {uri!r}")
        rest = uri[len(prefix) :]
        if "?" in rest or "#" in rest:
            raise ValueError(f"SPIFFE ID must not carry a query or fragment: {uri!r}")
        parts = rest.split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise ValueError(f"SPIFFE ID path must be /ns/<namespace>/sa/<account>: {uri!r}")
        return cls(trust_domain=parts[0], namespace=parts[2], service_account=parts[4])

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri


def canonical_serial(value: int | str) -> str:
    """A certificate serial number as revocation lists carry it (the control plane's ledger,
    snapshots' ``revoked_serials``, what sidecars compare): upper-case hex without leading
    zeros, from the number or any hex text (``getpeercert()['serialNumber']``)."""
    if isinstance(value, int):
        return format(value, "X")
    return value.upper().lstrip("0") or "0"


def peer_serial(peercert: object) -> str:
    """The serial number of a peer certificate (``getpeercert()`` form), canonical; empty
    without one."""
    if not isinstance(peercert, dict):
        return ""
    serial = peercert.get("serialNumber")
    return canonical_serial(serial) if isinstance(serial, str) else ""


def peer_uri_sans(peercert: object) -> tuple[str, ...]:
    """The URI SANs of a peer certificate in the dict form of ``SSLSocket.getpeercert()``."""
    if not isinstance(peercert, dict):
        return ()
    return tuple(
        value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"
    )
