"""The control plane's data directory: layout, permissions, admin token, serving cert.

``<data-dir>`` (mode 0700) holds ``store.db``, ``admin.token`` (0600), ``ca/`` and
``control/tls.{crt,key}``; see docs/internals.md §2.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from gossamer.control.ca import CertificateAuthority
from gossamer.identity.spiffe import SpiffeId

__all__ = [
    "CONTROL_NAMESPACE",
    "CONTROL_SERVICE_ACCOUNT",
    "SERVING_CERT_LIFETIME",
    "ensure_serving_cert",
    "load_or_create_admin_token",
    "prepare_data_dir",
]

CONTROL_NAMESPACE = "gossamer-system"
CONTROL_SERVICE_ACCOUNT = "control-plane"
SERVING_CERT_LIFETIME = timedelta(days=30)


def prepare_data_dir(data_dir: Path) -> Path:
    """Create the data directory (mode 0700) if needed; tighten its mode; return it."""
    path = Path(data_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def load_or_create_admin_token(data_dir: Path) -> str:
    """Read ``admin.token``, writing a new random one (mode 0600) on first start."""
    path = Path(data_dir) / "admin.token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    os.chmod(path, 0o600)
    return token


def _split_names(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of the serving certificate: the loopback names and
    ``names``, the wildcard addresses left out."""
    dns, ips = ["localhost"], ["127.0.0.1", "::1"]
    for name in names:
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            if name not in dns:
                dns.append(name)
            continue
        if not address.is_unspecified and str(address) not in ips:
            ips.append(str(address))
    return dns, ips


def _sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {*ext.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in ext.get_values_for_type(x509.IPAddress))}  # fmt: skip


def _still_fresh(
    cert_path: Path, key_path: Path, ca: CertificateAuthority, names: set[str]
) -> bool:
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        return False
    if not names <= _sans(cert):
        return False
    issuer = ca.issuer
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    now = datetime.now(UTC)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now > lifetime / 2


def ensure_serving_cert(
    data_dir: Path, ca: CertificateAuthority, names: Sequence[str] = ()
) -> tuple[Path, Path]:
    """``control/tls.{crt,key}`` (the stream's and, with ``--api-tls``, the config API's);
    re-issued when missing, foreign, past half its life or without one of ``names`` (the
    addresses it listens on, ``--tls-san``) besides the loopback names."""
    directory = Path(data_dir) / "control"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    dns, ips = _split_names(names)
    if not _still_fresh(cert_path, key_path, ca, {*dns, *ips}):
        identity = SpiffeId(ca.trust_domain, CONTROL_NAMESPACE, CONTROL_SERVICE_ACCOUNT)
        cert_pem, key_pem = ca.issue_keypair(identity, SERVING_CERT_LIFETIME, dns, ips)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, key_pem)
        finally:
            os.close(fd)
        os.chmod(key_path, 0o600)
        cert_path.write_bytes(cert_pem)
    return cert_path, key_path
