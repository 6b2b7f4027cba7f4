"""`gossamer certs status`'s warnings (``cli/certs.py``), as logic: a root close to its end and
a connected proxy whose certificate expired are named; the real command runs against a real
control plane in tests/integration/test_mesh_processes.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gossamer.cli.certs import _roots, _warnings


def _root_pem(days: int) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"root {days}")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=days))
            .sign(key, hashes.SHA256()))  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM)


def test_a_root_near_its_end_and_an_expired_proxy_certificate_are_warned_of() -> None:
    roots = _roots(_root_pem(3650) + _root_pem(30))
    assert [r["subject"] for r in roots] == ["CN=root 3650", "CN=root 30"]
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    future = (datetime.now(UTC) + timedelta(hours=12)).isoformat().replace("+00:00", "Z")
    proxies = [
        {"proxy_id": "a", "identity": "spiffe://x/ns/d/sa/a", "cert_expiry": past,
         "connected": True},
        {"proxy_id": "b", "identity": "spiffe://x/ns/d/sa/b", "cert_expiry": past,
         "connected": False},  # gone: its expiry is no alarm
        {"proxy_id": "c", "identity": "spiffe://x/ns/d/sa/c", "cert_expiry": future,
         "connected": True},
    ]  # fmt: skip
    warnings = _warnings(roots, proxies)
    assert len(warnings) == 2
    assert warnings[0].startswith("root CN=root 30 ") and "in 29 days" in warnings[0]
    assert warnings[1].startswith("proxy a (spiffe://x/ns/d/sa/a): its certificate expired")


def test_an_operators_intermediate_near_its_end_is_warned_of() -> None:
    """The mesh's issuer, when it is an intermediate (not in the bundle), is watched too; the
    built-in root as issuer is covered by the root warning."""
    soon = int((datetime.now(UTC) + timedelta(days=20)).timestamp())
    later = int((datetime.now(UTC) + timedelta(days=400)).timestamp())
    issuer = {"subject": "CN=Example Org Mesh CA", "serial": "AB", "not_after": soon,
              "intermediate": True}  # fmt: skip
    (warning,) = _warnings([], [], issuer)
    assert warning.startswith("the mesh's intermediate CN=Example Org Mesh CA expires on ")
    assert "in 19 days" in warning
    assert _warnings([], [], {**issuer, "not_after": later}) == []
    assert _warnings([], [], {**issuer, "intermediate": False}) == []
