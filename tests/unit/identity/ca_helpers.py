"""A throwaway certificate authority for identity and control-client tests.

``FakeCA`` is an in-memory ``gossamer.control.ca.CertificateAuthority`` (so tests get the very
certificates the control plane issues) with a string-URI, seconds-based API. Tests in other
folders load this file by path (tests/ has no packages).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from gossamer.control.ca import CertificateAuthority
from gossamer.identity.spiffe import SpiffeId

TRUST_DOMAIN = "gossamer.local"
CONTROL_PLANE_ID = f"spiffe://{TRUST_DOMAIN}/ns/gossamer-system/sa/control-plane"
_EXPIRED_SPAN = timedelta(minutes=1)


def workload_id(service: str, namespace: str = "default") -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service}"


class FakeCA:
    """An in-memory mesh CA that issues leaf certificates with SPIFFE URI SANs."""

    def __init__(self) -> None:
        self.authority = CertificateAuthority.ephemeral(TRUST_DOMAIN)

    @property
    def root_pem(self) -> bytes:
        return self.authority.root_pem

    def sign_csr(self, csr_pem: bytes, uri: str, *, lifetime: float = 3600.0) -> bytes:
        """Sign a CSR's public key for ``uri`` (its subject is ignored, as by the real CA)."""
        return self.authority.sign_csr(csr_pem, SpiffeId.parse(uri), timedelta(seconds=lifetime))

    def issue(
        self,
        uri: str,
        *,
        lifetime: float = 3600.0,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
    ) -> tuple[bytes, bytes]:
        """A fresh key and a leaf for it: (certificate PEM, PKCS#8 key PEM).

        A ``lifetime`` of zero or less gives a leaf that expired ``-lifetime`` seconds ago.
        """
        span = timedelta(seconds=lifetime)
        issued_at = None
        if lifetime <= 0:
            issued_at = datetime.now(UTC) + span - _EXPIRED_SPAN
            span = _EXPIRED_SPAN
        return self.authority.issue_keypair(
            SpiffeId.parse(uri), span, dns, ips, issued_at=issued_at
        )

    def write_leaf(
        self, directory: Path, name: str, uri: str, *, lifetime: float = 3600.0
    ) -> tuple[Path, Path]:
        """Issue a leaf and write it as ``name.crt``/``name.key``; return both paths."""
        cert, key = self.issue(uri, lifetime=lifetime)
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
        key_path.chmod(0o600)
        return cert_path, key_path
