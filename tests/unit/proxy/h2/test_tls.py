"""The ALPN ``h2`` client context: ``Credentials.alpn_client_context`` and the h2 runtime's use."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from gossamer.control.ca import CertificateAuthority
from gossamer.identity.credentials import Credentials
from gossamer.protocol.http1 import ProxyError
from gossamer.proxy.h2.runtime import H2Runtime
from gossamer.proxy.process.settings import (
    ControlSettings,
    IdentitySettings,
    ListenSettings,
    ProxySettings,
    WorkloadSettings,
)
from gossamer.proxy.state import ProxyState
from tests.sidecar_harness import handshake, identity, make_credentials


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


@pytest.fixture
def server(ca: CertificateAuthority, tmp_path: Path) -> Credentials:
    creds = make_credentials(ca, tmp_path / "server", "backend")
    creds.server_context.set_alpn_protocols(["h2", "http/1.1"])
    return creds


def renew(creds: Credentials, ca: CertificateAuthority, tmp_path: Path, hours: int) -> None:
    cert, key = ca.issue_keypair(identity("frontend"), timedelta(hours=hours))
    key_path = tmp_path / f"renewed-{hours}.key"
    key_path.write_bytes(key)
    creds.install(cert, key_path, ca.root_pem)


def test_no_context_without_a_certificate(tmp_path: Path) -> None:
    """Before the first certificate there is nothing to connect with."""
    assert Credentials(tmp_path / "w").alpn_client_context("h2") is None


def test_context_offers_h2_and_is_kept_per_protocol(
    ca: CertificateAuthority, server: Credentials, tmp_path: Path
) -> None:
    """One context per protocol, made once; it negotiates h2 with a peer sidecar."""
    creds = make_credentials(ca, tmp_path / "w", "frontend")
    ctx = creds.alpn_client_context("h2")
    assert ctx is not None
    assert creds.alpn_client_context("h2") is ctx
    assert creds.alpn_client_context("http/1.1") is not ctx
    alpn, _ = handshake(ctx, server.server_context)
    assert alpn == "h2"


def test_renewed_certificate_is_used_in_the_same_context(
    ca: CertificateAuthority, server: Credentials, tmp_path: Path
) -> None:
    """After ``install`` the same context presents the new certificate on new connections."""
    creds = make_credentials(ca, tmp_path / "w", "frontend")
    ctx = creds.alpn_client_context("h2")
    assert ctx is not None
    _, before = handshake(ctx, server.server_context)
    renew(creds, ca, tmp_path, 5)
    assert creds.alpn_client_context("h2") is ctx
    _, after = handshake(ctx, server.server_context)
    assert after != before


def test_context_asked_for_after_install_loads_its_trust_bundle(
    ca: CertificateAuthority, server: Credentials, tmp_path: Path
) -> None:
    """A context made after the bundle arrived still trusts it (made lazily, loaded whole)."""
    creds = Credentials(tmp_path / "w")
    renew(creds, ca, tmp_path, 3)
    ctx = creds.alpn_client_context("h2")
    assert ctx is not None
    assert ctx.get_ca_certs()
    alpn, _ = handshake(ctx, server.server_context)
    assert alpn == "h2"


def test_stored_certificate_is_loaded_by_a_new_credentials(
    ca: CertificateAuthority, server: Credentials, tmp_path: Path
) -> None:
    """A restarted sidecar's ALPN context uses the certificate left in the workdir."""
    make_credentials(ca, tmp_path / "w", "frontend")
    ctx = Credentials(tmp_path / "w").alpn_client_context("h2")
    assert ctx is not None
    alpn, _ = handshake(ctx, server.server_context)
    assert alpn == "h2"


def _settings(workdir: Path) -> ProxySettings:
    return ProxySettings(
        workload=WorkloadSettings(service="frontend"),
        listen=ListenSettings(),
        control=ControlSettings(),
        identity=IdentitySettings(workdir=workdir),
    )


def _connect_failure(state: ProxyState) -> ProxyError:
    runtime = H2Runtime(state)

    async def go() -> None:
        await runtime.outbound_pool._open(("127.0.0.1", 9), None, None)

    with pytest.raises(ProxyError) as info:
        asyncio.run(go())
    return info.value


def test_runtime_without_credentials_is_a_connect_failure(tmp_path: Path) -> None:
    """An h2 runtime whose state has no credentials refuses mTLS connections with a 502."""
    error = _connect_failure(ProxyState(_settings(tmp_path)))
    assert (error.status, error.cause) == (502, "connect-failed")


def test_runtime_before_the_first_certificate_is_a_connect_failure(tmp_path: Path) -> None:
    """With credentials but no certificate yet, a new h2 connection is ``connect-failed``."""
    creds = Credentials(tmp_path / "w")
    state = ProxyState(_settings(tmp_path), credentials=creds)
    error = _connect_failure(state)
    assert (error.status, error.cause) == (502, "connect-failed")
    assert "no workload certificate" in str(error)
