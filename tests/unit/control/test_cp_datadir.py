"""The data directory: permissions, admin token, serving certificate."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from gossamer.control.ca import CertificateAuthority
from gossamer.control.datadir import (
    ensure_serving_cert,
    load_or_create_admin_token,
    prepare_data_dir,
)
from gossamer.control.server import parse_settings


def test_data_dir_is_private(tmp_path: Path) -> None:
    """The data directory is created with mode 0700."""
    path = prepare_data_dir(tmp_path / "data")
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_admin_token_written_once_with_mode_0600(tmp_path: Path) -> None:
    """admin.token is created 0600 on first use and reused afterwards."""
    token = load_or_create_admin_token(tmp_path)
    assert len(token) >= 40
    assert stat.S_IMODE((tmp_path / "admin.token").stat().st_mode) == 0o600
    assert load_or_create_admin_token(tmp_path) == token


def test_serving_cert_has_control_identity_and_local_names(tmp_path: Path) -> None:
    """control/tls.crt is for spiffe://td/ns/gossamer-system/sa/control-plane, localhost."""
    ca = CertificateAuthority.load_or_create(tmp_path)
    cert_path, key_path = ensure_serving_cert(tmp_path, ca)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://gossamer.local/ns/gossamer-system/sa/control-plane"
    ]
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_fresh_serving_cert_is_kept(tmp_path: Path) -> None:
    """A serving cert with more than half its life left is not re-issued."""
    ca = CertificateAuthority.load_or_create(tmp_path)
    cert_path, _ = ensure_serving_cert(tmp_path, ca)
    before = cert_path.read_bytes()
    ensure_serving_cert(tmp_path, ca)
    assert cert_path.read_bytes() == before


def test_serving_cert_from_another_ca_is_replaced(tmp_path: Path) -> None:
    """A serving cert not issued by the current root is re-issued."""
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    ca = CertificateAuthority.load_or_create(tmp_path)
    cert_path, _ = ensure_serving_cert(tmp_path, other)
    before = cert_path.read_bytes()
    ensure_serving_cert(tmp_path, ca)
    assert cert_path.read_bytes() != before


def test_flags_parse_into_settings(tmp_path: Path) -> None:
    """Command-line flags become ControlSettings."""
    settings = parse_settings(
        ["--data-dir", str(tmp_path), "--api-addr", "127.0.0.1:1", "--stream-addr",
         "127.0.0.1:2", "--endpoint-grace", "0.5", "--cert-lifetime", "30m"]
    )  # fmt: skip
    assert (settings.api_addr.port, settings.stream_addr.port) == (1, 2)
    assert settings.endpoint_grace == 0.5
    assert settings.cert_lifetime.total_seconds() == 1800
    assert settings.data_dir == tmp_path


def test_api_off_loopback_needs_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Finding 6: the config API (admin token, whole configuration) is refused on a
    non-loopback address unless served over TLS."""
    with pytest.raises(SystemExit) as exited:
        parse_settings(["--data-dir", str(tmp_path), "--api-addr", "0.0.0.0:15010"])
    assert exited.value.code == 2
    assert "add --api-tls" in capsys.readouterr().err
    settings = parse_settings(
        ["--data-dir", str(tmp_path), "--api-addr", "0.0.0.0:15010", "--api-tls",
         "--tls-san", "cp.example.com", "--tls-san", "10.1.2.3"]
    )  # fmt: skip
    assert settings.api_tls and settings.tls_sans == ("cp.example.com", "10.1.2.3")
    assert not parse_settings(["--data-dir", str(tmp_path), "--api-addr", "[::1]:1"]).api_tls


def test_serving_cert_names_the_addresses_it_serves(tmp_path: Path) -> None:
    """The serving certificate carries the loopback names, the listen addresses and
    --tls-san names (not the wildcard), and is re-issued when one is missing."""
    ca = CertificateAuthority.load_or_create(tmp_path)
    cert_path, _ = ensure_serving_cert(tmp_path, ca, ("0.0.0.0", "127.0.0.1"))
    first = cert_path.read_bytes()
    cert_path2, _ = ensure_serving_cert(tmp_path, ca, ("cp.example.com", "10.1.2.3"))
    cert = x509.load_pem_x509_certificate(cert_path2.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "cp.example.com"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1", "::1", "10.1.2.3"
    }  # fmt: skip
    second = cert_path2.read_bytes()
    assert second != first
    ensure_serving_cert(tmp_path, ca, ("cp.example.com",))
    assert cert_path2.read_bytes() == second  # every name there: kept
