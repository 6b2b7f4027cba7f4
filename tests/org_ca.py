"""An organisation's PKI for tests of bringing your own CA: a root it keeps to itself and an
intermediate for the mesh, written as the files an operator hands to ``gossamer control
--ca-cert --ca-key --ca-bundle`` (or to ``gossamer certs rotate``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ORG = "Example Org Root"
INTERMEDIATE = "Example Org Mesh CA"


Key = ec.EllipticCurvePrivateKey


def _ca(name: str, key: Key, issuer: x509.Name | None, issuer_key: Key | None,
        path_length: int | None) -> x509.Certificate:  # fmt: skip
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(issuer_key or key, hashes.SHA256())
    )  # fmt: skip


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def organisation(tmp: Path) -> tuple[Path, Path, Path, x509.Certificate]:
    root_key, mesh_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())  # fmt: skip
    root = _ca(ORG, root_key, None, None, None)
    intermediate = _ca(INTERMEDIATE, mesh_key, root.subject, root_key, 0)
    files = tmp / "org"
    files.mkdir(parents=True)
    (files / "mesh-ca.crt").write_bytes(_pem(intermediate))
    (files / "mesh-ca.key").write_bytes(key_pem(mesh_key))
    (files / "root.crt").write_bytes(_pem(root))
    return files / "mesh-ca.crt", files / "mesh-ca.key", files / "root.crt", intermediate
