"""The mesh's certificate authority: the issuing key and certificate, and signing workload
certs.

Built in: owns ``<data-dir>/ca/root.key`` (ECDSA P-256, PKCS#8 PEM, mode 0600) and
``ca/root.crt`` (the trust bundle), a self-signed root that signs the leaves.

Brought by the operator (``import_issuer``, from ``gossamer control --ca-cert --ca-key
--ca-bundle``): an intermediate under the organisation's root. ``ca/issuer.crt`` holds the
intermediate (and any intermediates above it), ``ca/issuer.key`` its key (EC or RSA, 0600),
``ca/root.crt`` the organisation's root(s): the trust bundle. Leaves are signed by the
intermediate and handed out with its chain, so every peer can build the path to the root.

Leaves carry the workload's SPIFFE ID as their only URI SAN; only a CSR's public key is used,
never its subject or extensions.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gossamer.identity.spiffe import DEFAULT_TRUST_DOMAIN, SpiffeId

__all__ = [
    "CertificateAuthority",
    "check_csr",
    "generate_csr",
    "import_issuer",
    "leaf_expiry",
    "write_public_file",
]

ROOT_LIFETIME = timedelta(days=3650)
BACKDATE = timedelta(seconds=60)
_MIN_RSA_BITS = 2048
_ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the first byte (atomic rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_public_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0644) by an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _check_public_key(key: object) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _ALLOWED_CURVES):
            raise ValueError(f"unsupported elliptic curve {key.curve.name}")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise ValueError(f"RSA key of {key.key_size} bits is too small (min 2048)")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError(f"unsupported key type {type(key).__name__}")


def check_csr(csr_pem: bytes) -> CertificatePublicKeyTypes:
    """Parse a PEM CSR, verify its self-signature and key type; return its public key.

    Raises ``ValueError`` saying what is wrong.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise ValueError(f"cannot parse CSR: {exc}") from exc
    try:
        valid = csr.is_signature_valid
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise ValueError(f"cannot verify CSR signature: {exc}") from exc
    if not valid:
        raise ValueError("CSR signature does not verify")
    public = csr.public_key()
    _check_public_key(public)
    return public


def leaf_expiry(cert_pem: bytes) -> datetime:
    """The not-after time (UTC) of a PEM certificate."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


class CertificateAuthority:
    """The mesh CA. Create with :meth:`load_or_create`."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
        cert: x509.Certificate,
        trust_domain: str,
        *,
        chain: bytes = b"",
        bundle: bytes | None = None,
    ) -> None:
        self._key = key
        self._cert = cert
        self._trust_domain = trust_domain
        # The trust bundle (the roots peers trust) and the intermediates handed out with each
        # leaf (empty when the issuer is itself the root).
        self._root_pem = bundle if bundle is not None else cert.public_bytes(
            serialization.Encoding.PEM
        )
        self._chain = chain
        self._ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())

    @classmethod
    def load_or_create(
        cls, directory: Path, trust_domain: str = DEFAULT_TRUST_DOMAIN
    ) -> CertificateAuthority:
        """Load ``directory/ca/root.{key,crt}``, creating them on first use (or the
        operator's intermediate, ``import_issuer``)."""
        return cls.load_dir(Path(directory) / "ca", trust_domain)

    @classmethod
    def load_dir(cls, ca_dir: Path, trust_domain: str) -> CertificateAuthority:
        """The issuer kept in ``ca_dir``: the operator's intermediate when ``issuer.*`` are
        there, else the root in ``root.*`` (made on first use)."""
        if (ca_dir / ISSUER_KEY).exists() and (ca_dir / ISSUER_CERT).exists():
            return cls._brought(ca_dir, trust_domain)
        return cls.load_or_create_root(ca_dir, trust_domain)

    @classmethod
    def load_or_create_root(cls, ca_dir: Path, trust_domain: str) -> CertificateAuthority:
        """The root in ``ca_dir/root.{key,crt}``, made there on first use."""
        key_path, cert_path = ca_dir / "root.key", ca_dir / "root.crt"
        if key_path.exists() and cert_path.exists():
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path}: expected an ECDSA private key")
            # root.crt is the trust bundle: during a rotation the old root, then the new one.
            cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
            if cert.public_key() != loaded.public_key():
                raise ValueError(f"{cert_path} does not match {key_path}")
            return cls(loaded, cert, trust_domain)
        return cls.create_root(ca_dir, trust_domain)

    @classmethod
    def create_root(cls, ca_dir: Path, trust_domain: str) -> CertificateAuthority:
        """A new self-signed root: its key in ``ca_dir/root.key`` (0600), its certificate in
        ``ca_dir/root.crt``."""
        ca_dir.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = cls._self_signed_root(key, trust_domain)
        _write_private(
            ca_dir / "root.key",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        write_public_file(ca_dir / "root.crt", cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert, trust_domain)

    @property
    def brought(self) -> bool:
        """The issuer is the operator's intermediate (not a root of our own)."""
        return bool(self._chain)

    @property
    def key_id(self) -> bytes:
        """The issuer's subject key identifier (a leaf's authority key identifier names it)."""
        return self._ski.digest

    @classmethod
    def _brought(cls, ca_dir: Path, trust_domain: str) -> CertificateAuthority:
        """The operator's intermediate (``import_issuer`` checked it when it was imported)."""
        chain_pem = (ca_dir / ISSUER_CERT).read_bytes()
        issuer = x509.load_pem_x509_certificates(chain_pem)[0]
        key = serialization.load_pem_private_key((ca_dir / ISSUER_KEY).read_bytes(), None)
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise ValueError(f"{ca_dir / ISSUER_KEY}: expected an EC or RSA private key")
        return cls(key, issuer, trust_domain, chain=chain_pem,
                   bundle=(ca_dir / "root.crt").read_bytes())  # fmt: skip

    @classmethod
    def ephemeral(cls, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> CertificateAuthority:
        """A CA whose root key and certificate live only in memory (for tests and tools)."""
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key, cls._self_signed_root(key, trust_domain), trust_domain)

    @staticmethod
    def _self_signed_root(key: ec.EllipticCurvePrivateKey, trust_domain: str) -> x509.Certificate:
        now = datetime.now(UTC)
        name = x509.Name(  # the serial number attribute tells a rotated root from the one before
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Gossamer"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Gossamer root CA {trust_domain}"),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, now.strftime("%Y%m%d%H%M%S%f")),
            ]
        )
        public = key.public_key()
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + ROOT_LIFETIME)
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
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )

    @property
    def root_pem(self) -> bytes:
        """The trust bundle: the root(s) every peer trusts."""
        return self._root_pem

    @property
    def issuer(self) -> x509.Certificate:
        """The certificate that signs the leaves (the root itself, or the operator's
        intermediate)."""
        return self._cert

    @property
    def trust_domain(self) -> str:
        return self._trust_domain

    def sign_csr(self, csr_pem: bytes, identity: SpiffeId, lifetime: timedelta) -> bytes:
        """Issue a leaf for ``identity`` over the CSR's public key, followed by the chain up
        to the trust bundle (if any); ``ValueError`` if bad CSR."""
        public = check_csr(csr_pem)
        cert = self._issue(public, identity, lifetime, (), ())
        return cert.public_bytes(serialization.Encoding.PEM) + self._chain

    def issue_keypair(
        self,
        identity: SpiffeId,
        lifetime: timedelta,
        dns_names: Sequence[str] = (),
        ips: Sequence[str] = (),
        *,
        issued_at: datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """A new P-256 key and a leaf for it: ``(cert PEM, key PEM)``.

        ``issued_at`` (default now) is when the leaf's validity starts counting (less the
        usual backdating); tests pass a past time to get an already expired leaf.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue(key.public_key(), identity, lifetime, dns_names, ips, issued_at)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM) + self._chain, key_pem

    def _issue(
        self,
        public: CertificatePublicKeyTypes,
        identity: SpiffeId,
        lifetime: timedelta,
        dns_names: Sequence[str],
        ips: Sequence[str],
        issued_at: datetime | None = None,
    ) -> x509.Certificate:
        if lifetime <= timedelta(0):
            raise ValueError("certificate lifetime must be positive")
        now = datetime.now(UTC) if issued_at is None else issued_at
        # A CN is at most 64 characters; long SPIFFE IDs fall back to the service account.
        common_name = identity.uri if len(identity.uri) <= 64 else identity.service_account
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        sans += [x509.DNSName(name) for name in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )


ISSUER_CERT = "issuer.crt"
ISSUER_KEY = "issuer.key"


def import_issuer(ca_dir: Path, cert_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> None:
    """Make the operator's intermediate the mesh's issuer: check it and copy it into
    ``ca_dir`` (``<data-dir>/ca``, or ``ca/next`` for a rotation; see the module docstring).
    ``cert_pem``: the intermediate, then any intermediates above it, in order;
    ``bundle_pem``: the root(s) peers are to trust.

    Refused (``ValueError`` naming what is wrong): a key that does not match, a certificate
    that is no CA, a chain whose links do not sign each other, or whose top is not signed by
    a root of the bundle."""
    chain = x509.load_pem_x509_certificates(cert_pem)
    roots = x509.load_pem_x509_certificates(bundle_pem)
    key = serialization.load_pem_private_key(key_pem, None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ValueError("the CA key must be an EC or RSA private key")
    if chain[0].public_key() != key.public_key():
        raise ValueError("the CA key does not match the CA certificate")
    try:
        constraints = chain[0].extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ValueError("the CA certificate is not a CA (basicConstraints CA:TRUE)")
    for child, parent in itertools.pairwise(chain):
        if not _issued_by(child, parent):
            raise ValueError(f"{child.subject.rfc4514_string()} is not signed by "
                             f"{parent.subject.rfc4514_string()}")  # fmt: skip
    if not any(_issued_by(chain[-1], root) for root in roots):
        raise ValueError(f"{chain[-1].subject.rfc4514_string()} is not signed by a root of the "
                         "bundle")  # fmt: skip
    ca_dir.mkdir(parents=True, exist_ok=True)
    _write_private(ca_dir / ISSUER_KEY, key_pem)
    write_public_file(ca_dir / ISSUER_CERT, b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in chain))  # fmt: skip
    write_public_file(ca_dir / "root.crt", b"".join(
        r.public_bytes(serialization.Encoding.PEM) for r in roots))  # fmt: skip


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def generate_csr(identity_hint: str) -> tuple[bytes, bytes]:
    """A fresh P-256 key and a CSR for it: ``(key PEM, CSR PEM)`` (for tests and tools)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity_hint)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)
