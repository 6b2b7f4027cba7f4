"""The ALPN ``h2`` client context follows the workload certificate on disk."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from gossamer.control.ca import CertificateAuthority
from gossamer.proxy.h2.tls import AlpnClientContext, CredentialFiles
from tests.sidecar_harness import identity, make_credentials


def test_no_context_without_a_certificate(tmp_path: Path) -> None:
    """Before the first certificate there is nothing to connect with."""
    ctx = AlpnClientContext(CredentialFiles.in_workdir(tmp_path), ["h2"])
    assert ctx.get() is None


def test_context_is_built_once_and_rebuilt_after_renewal(tmp_path: Path) -> None:
    """The same context serves until ``Credentials.install`` replaces the certificate."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    creds = make_credentials(ca, tmp_path / "w", "frontend")
    ctx = AlpnClientContext(CredentialFiles.in_workdir(tmp_path / "w"), ["h2"])
    first = ctx.get()
    assert first is not None
    assert ctx.get() is first
    cert, key = ca.issue_keypair(identity("frontend"), timedelta(hours=2))
    key_path = tmp_path / "w" / "renewed.key"
    key_path.write_bytes(key)
    creds.install(cert, key_path, ca.root_pem)
    second = ctx.get()
    assert second is not None and second is not first
    assert ctx.reloads == 2
