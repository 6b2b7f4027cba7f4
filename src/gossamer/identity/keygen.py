"""Key and CSR generation, run as a short-lived child process.

``python -m gossamer.identity.keygen --key-out PATH --identity-hint spiffe://...`` generates an
ECDSA P-256 key, writes it as PKCS#8 PEM to PATH (mode 0600, written to a temporary file in the
same directory and renamed into place), and prints a PEM CSR on stdout whose subject CN and URI
SAN carry the identity hint. Exit status 0 on success, 2 with a message on stderr on failure.

This module is the only part of the sidecar's identity code that imports ``cryptography``; the
sidecar process runs it as a child (see ``credentials.generate_key_and_csr``) so its own resident
memory never pays for that import (DESIGN §3).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gossamer.identity.credentials import write_atomic

__all__ = ["generate", "main"]

# X.509 limits a CommonName to 64 characters; longer hints go in the URI SAN only.
_CN_MAX = 64


def generate(key_out: Path, hint: str) -> bytes:
    """Write a new P-256 key to ``key_out`` (mode 0600) and return a PEM CSR for ``hint``."""
    if not hint.startswith("spiffe://"):
        raise ValueError(f"identity hint must be a spiffe:// URI, got {hint!r}")
    if not key_out.parent.is_dir():
        raise ValueError(f"directory of --key-out does not exist: {key_out.parent}")
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    names = [x509.NameAttribute(NameOID.COMMON_NAME, hint)] if len(hint) <= _CN_MAX else []
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(names))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(hint)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    write_atomic(key_out, key_pem, mode=0o600)
    return csr.public_bytes(serialization.Encoding.PEM)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gossamer.identity.keygen",
        description="Generate an ECDSA P-256 key (PKCS#8 PEM, mode 0600) and print a PEM CSR.",
    )
    parser.add_argument("--key-out", required=True, type=Path, help="where to write the key")
    parser.add_argument("--identity-hint", required=True, help="spiffe:// URI for CN and SAN")
    args = parser.parse_args(argv)
    try:
        csr_pem = generate(args.key_out, args.identity_hint)
    except (OSError, ValueError) as exc:
        print(f"keygen: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(csr_pem.decode("ascii"))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
