"""The keygen child process: key file, CSR contents, failures, and the async wrapper."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID

from gossamer.identity.credentials import KeygenError, generate_key_and_csr

HINT = "spiffe://gossamer.local/ns/default/sa/frontend"


def run_keygen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gossamer.identity.keygen", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_key_file_is_pkcs8_p256_with_mode_0600(tmp_path: Path) -> None:
    """The key is written as an unencrypted PKCS#8 P-256 PEM that only the owner can read."""
    key_out = tmp_path / "new.key"
    result = run_keygen("--key-out", str(key_out), "--identity-hint", HINT)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(key_out.stat().st_mode) == 0o600
    pem = key_out.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert [p.name for p in tmp_path.iterdir()] == ["new.key"]  # no temp file left behind


def test_csr_is_signed_by_the_key_and_carries_the_hint(tmp_path: Path) -> None:
    """stdout is a valid CSR for the new key with CN and URI SAN equal to the hint."""
    key_out = tmp_path / "k.pem"
    result = run_keygen("--key-out", str(key_out), "--identity-hint", HINT)
    assert result.returncode == 0, result.stderr
    csr = x509.load_pem_x509_csr(result.stdout.encode())
    assert csr.is_signature_valid
    key = load_pem_private_key(key_out.read_bytes(), password=None)
    assert csr.public_key() == key.public_key()
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == HINT
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [HINT]


def test_long_hint_goes_into_the_san_only(tmp_path: Path) -> None:
    """A hint longer than the 64-character CN limit still yields a CSR with the URI SAN."""
    hint = "spiffe://gossamer.local/ns/" + "n" * 40 + "/sa/" + "s" * 40
    result = run_keygen("--key-out", str(tmp_path / "k"), "--identity-hint", hint)
    assert result.returncode == 0, result.stderr
    csr = x509.load_pem_x509_csr(result.stdout.encode())
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [hint]


def test_bad_hint_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    """A hint that is not a spiffe:// URI is refused with exit status 2 and no key file."""
    result = run_keygen("--key-out", str(tmp_path / "k"), "--identity-hint", "frontend")
    assert result.returncode == 2
    assert "spiffe://" in result.stderr
    assert not (tmp_path / "k").exists()


def test_missing_directory_exits_2(tmp_path: Path) -> None:
    """A key path in a directory that does not exist fails with exit status 2."""
    result = run_keygen("--key-out", str(tmp_path / "nope" / "k"), "--identity-hint", HINT)
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_generate_key_and_csr_runs_the_child(tmp_path: Path) -> None:
    """The async helper returns a 0600 key inside the workdir and the CSR bytes."""
    key_path, csr_pem = asyncio.run(generate_key_and_csr(tmp_path, HINT))
    assert key_path.parent == tmp_path
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    csr = x509.load_pem_x509_csr(csr_pem)
    key = load_pem_private_key(key_path.read_bytes(), password=None)
    assert csr.public_key() == key.public_key()


def test_generate_key_and_csr_raises_keygen_error(tmp_path: Path) -> None:
    """A failing child surfaces as KeygenError carrying the child's message."""
    with pytest.raises(KeygenError, match="spiffe://"):
        asyncio.run(generate_key_and_csr(tmp_path, "not-a-uri"))
    assert list(tmp_path.iterdir()) == []
