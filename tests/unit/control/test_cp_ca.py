"""The certificate authority: root creation, leaf signing, refusals."""

from __future__ import annotations

import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from gossamer.control.ca import CertificateAuthority, generate_csr, import_issuer
from gossamer.identity.spiffe import SpiffeId

IDENTITY = SpiffeId("gossamer.local", "default", "catalog")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path)


def sign(ca: CertificateAuthority, lifetime: timedelta = timedelta(hours=1)) -> x509.Certificate:
    _key, csr = generate_csr("whatever")
    return x509.load_pem_x509_certificate(ca.sign_csr(csr, IDENTITY, lifetime))


def test_root_files_and_key_mode(tmp_path: Path, ca: CertificateAuthority) -> None:
    """First use writes ca/root.key (0600) and a self-signed CA root."""
    key_path = tmp_path / "ca" / "root.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    root = x509.load_pem_x509_certificate((tmp_path / "ca" / "root.crt").read_bytes())
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert root.not_valid_after_utc - root.not_valid_before_utc > timedelta(days=3600)
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert ca.root_pem == (tmp_path / "ca" / "root.crt").read_bytes()


def test_reload_keeps_the_same_root(tmp_path: Path, ca: CertificateAuthority) -> None:
    """load_or_create on an existing directory loads the same root."""
    again = CertificateAuthority.load_or_create(tmp_path)
    assert again.root_pem == ca.root_pem


def test_leaf_carries_spiffe_id_and_usages(ca: CertificateAuthority) -> None:
    """The leaf has the identity as URI SAN and CN, client+server EKU, no CA flag."""
    leaf = sign(ca)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [IDENTITY.uri]
    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == IDENTITY.uri
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_leaf_validity_window(ca: CertificateAuthority) -> None:
    """not-before is backdated 60 s, not-after is now + lifetime."""
    now = datetime.now(UTC)
    leaf = sign(ca, timedelta(minutes=5))
    assert abs((now - leaf.not_valid_before_utc).total_seconds() - 60) < 5
    assert abs((leaf.not_valid_after_utc - now).total_seconds() - 300) < 5


def test_leaf_key_identifiers_link_to_root(ca: CertificateAuthority) -> None:
    """The leaf's AKI is the root's SKI."""
    root = x509.load_pem_x509_certificate(ca.root_pem)
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    aki = sign(ca).extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski


def test_chain_verifies_with_cryptography(ca: CertificateAuthority) -> None:
    """cryptography's client verifier accepts the leaf under the root."""
    root = x509.load_pem_x509_certificate(ca.root_pem)
    verifier = PolicyBuilder().store(Store([root])).build_client_verifier()
    result = verifier.verify(sign(ca), [])
    assert result.subjects is not None
    assert x509.UniformResourceIdentifier(IDENTITY.uri) in result.subjects


def test_chain_verifies_with_openssl(tmp_path: Path, ca: CertificateAuthority) -> None:
    """openssl verify accepts the leaf for TLS client and server use."""
    leaf_path = tmp_path / "leaf.pem"
    leaf_path.write_bytes(sign(ca).public_bytes(serialization.Encoding.PEM))
    for purpose in ("sslclient", "sslserver"):
        done = subprocess.run(
            ["openssl", "verify", "-purpose", purpose, "-CAfile",
             str(tmp_path / "ca" / "root.crt"), str(leaf_path)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr


def test_only_the_csr_public_key_is_used(ca: CertificateAuthority) -> None:
    """The CSR's subject is ignored; its public key is the leaf's key."""
    key_pem, csr_pem = generate_csr("spiffe://gossamer.local/ns/kube-system/sa/admin")
    leaf = x509.load_pem_x509_certificate(ca.sign_csr(csr_pem, IDENTITY, timedelta(hours=1)))
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert leaf.public_key() == key.public_key()
    assert "admin" not in leaf.subject.rfc4514_string()


def test_garbage_csr_is_refused(ca: CertificateAuthority) -> None:
    """Text that is not a CSR raises ValueError."""
    with pytest.raises(ValueError, match="cannot parse CSR"):
        ca.sign_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", IDENTITY, timedelta(hours=1))


def test_tampered_csr_is_refused(ca: CertificateAuthority) -> None:
    """A CSR whose self-signature does not verify raises ValueError."""
    _key, csr_pem = generate_csr("x")
    csr = x509.load_pem_x509_csr(csr_pem)
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x55  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(ValueError):
        ca.sign_csr(tampered, IDENTITY, timedelta(hours=1))


def test_weak_rsa_key_is_refused(ca: CertificateAuthority) -> None:
    """An RSA key under 2048 bits is refused."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(ValueError, match="too small"):
        ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM), IDENTITY, timedelta(hours=1))


def test_issue_keypair_with_dns_and_ip(ca: CertificateAuthority) -> None:
    """issue_keypair returns a matching key and a cert with the requested SANs."""
    cert_pem, key_pem = ca.issue_keypair(
        IDENTITY, timedelta(hours=1), dns_names=["localhost"], ips=["127.0.0.1"]
    )
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert cert.public_key() == key.public_key()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [IDENTITY.uri]


def test_ephemeral_ca_writes_nothing(tmp_path: Path) -> None:
    """An ephemeral CA keeps its root in memory and issues leaves that chain to it."""
    ca = CertificateAuthority.ephemeral("gossamer.local")
    cert_pem, _key = ca.issue_keypair(IDENTITY, timedelta(hours=1))
    leaf = x509.load_pem_x509_certificate(cert_pem)
    root = x509.load_pem_x509_certificate(ca.root_pem)
    assert leaf.issuer == root.subject
    assert list(tmp_path.iterdir()) == []


def test_issued_at_moves_the_validity_window(ca: CertificateAuthority) -> None:
    """A past ``issued_at`` gives a leaf whose notAfter is issued_at plus the lifetime."""
    issued_at = datetime.now(UTC) - timedelta(hours=2)
    cert_pem, _key = ca.issue_keypair(IDENTITY, timedelta(hours=1), issued_at=issued_at)
    leaf = x509.load_pem_x509_certificate(cert_pem)
    assert leaf.not_valid_after_utc == (issued_at + timedelta(hours=1)).replace(microsecond=0)
    assert leaf.not_valid_after_utc < datetime.now(UTC)


class TestImportedIssuer:
    """The operator's intermediate (``import_issuer``): checked, then signing the leaves,
    handed out with its chain; the trust bundle is the organisation's root."""

    @staticmethod
    def _cert(name: str, key: Any, issuer: Any = None, issuer_key: Any = None,
              ca: bool = True) -> Any:  # fmt: skip
        now = datetime.now(UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(issuer.subject if issuer is not None else subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=1))
                   .not_valid_after(now + timedelta(days=30)))  # fmt: skip
        if ca:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                            critical=True)  # fmt: skip
        return builder.sign(issuer_key or key, hashes.SHA256())

    @staticmethod
    def _pem(*certs: Any) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    @staticmethod
    def _key(key: Any) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())  # fmt: skip

    def test_leaves_are_signed_by_the_intermediate_and_carry_it(self, tmp_path: Path) -> None:
        root_key, mesh_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
            ec.SECP256R1())  # fmt: skip
        root = self._cert("org root", root_key)
        mesh = self._cert("mesh ca", mesh_key, root, root_key)
        import_issuer(tmp_path / "ca", self._pem(mesh), self._key(mesh_key), self._pem(root))
        ca = CertificateAuthority.load_or_create(tmp_path)
        assert ca.root_pem == self._pem(root) and ca.issuer == mesh
        leaf_pem, _ = ca.issue_keypair(SpiffeId("gossamer.local", "default", "web"),
                                       timedelta(hours=1))  # fmt: skip
        leaf, carried = x509.load_pem_x509_certificates(leaf_pem)
        leaf.verify_directly_issued_by(mesh)
        assert carried == mesh
        assert (tmp_path / "ca" / "issuer.key").stat().st_mode & 0o777 == 0o600

    def test_what_does_not_chain_to_the_bundle_is_refused(self, tmp_path: Path) -> None:
        root_key, mesh_key, other_key = (ec.generate_private_key(ec.SECP256R1())
                                         for _ in range(3))  # fmt: skip
        root = self._cert("org root", root_key)
        mesh = self._cert("mesh ca", mesh_key, root, root_key)
        stranger = self._cert("other root", other_key)
        leafish = self._cert("not a ca", mesh_key, root, root_key, ca=False)
        cases = [
            (self._pem(mesh), self._key(other_key), self._pem(root), "does not match"),
            (self._pem(leafish), self._key(mesh_key), self._pem(root), "is not a CA"),
            (self._pem(mesh), self._key(mesh_key), self._pem(stranger), "not signed by a root"),
            (self._pem(mesh, stranger), self._key(mesh_key), self._pem(root),
             "CN=mesh ca is not signed by CN=other root"),
        ]  # fmt: skip
        for cert, key, bundle, words in cases:
            with pytest.raises(ValueError, match=words):
                import_issuer(tmp_path / "ca", cert, key, bundle)
        assert not (tmp_path / "ca" / "issuer.key").exists()
