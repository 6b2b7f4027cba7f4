"""A throwaway certificate authority for identity and control-client tests (uses cryptography).

Tests in other folders load this file by path (tests/ has no packages).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "gossamer.local"
CONTROL_PLANE_ID = f"spiffe://{TRUST_DOMAIN}/ns/gossamer-system/sa/control-plane"


def workload_id(service: str, namespace: str = "default") -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service}"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class FakeCA:
    """A self-signed P-256 root that issues leaf certificates with SPIFFE URI SANs."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    cert: x509.Certificate | None = None

    def __post_init__(self) -> None:
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gossamer test root")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def root_pem(self) -> bytes:
        assert self.cert is not None
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def sign(
        self,
        public_key: ec.EllipticCurvePublicKey,
        uri: str,
        *,
        lifetime: float = 3600.0,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
    ) -> bytes:
        """Issue a leaf for ``public_key`` with URI SAN ``uri``; return its PEM."""
        assert self.cert is not None
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
        sans += [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=30))
            .not_valid_after(now + dt.timedelta(seconds=lifetime))
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def sign_csr(self, csr_pem: bytes, uri: str, *, lifetime: float = 3600.0) -> bytes:
        """Sign a CSR's public key for ``uri`` (ignoring its subject, like the real CA)."""
        csr = x509.load_pem_x509_csr(csr_pem)
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        return self.sign(public_key, uri, lifetime=lifetime)

    def issue(
        self,
        uri: str,
        *,
        lifetime: float = 3600.0,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
    ) -> tuple[bytes, bytes]:
        """A fresh key and a leaf for it: (certificate PEM, PKCS#8 key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.sign(key.public_key(), uri, lifetime=lifetime, dns=dns, ips=ips)
        return cert, _pem_key(key)

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
