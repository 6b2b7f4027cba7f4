"""Signing with the workload key, in a short-lived child process.

``python -m gossamer.identity.signer KEY`` reads a payload on stdin and prints its ECDSA
(SHA-256, DER) signature by the PEM key at KEY, base64-encoded. Exit status 0 on success, 2
with a message on stderr on failure. ``sign`` runs it from the sidecar: like key generation
(``gossamer.identity.keygen``), the import of ``cryptography`` happens in the child, so the
sidecar's own resident memory never pays for it. The audit log's checkpoints are signed this
way (``gossamer.audit_chain``), a few times a minute at most.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["SignError", "main", "sign"]


class SignError(Exception):
    pass


async def sign(key_path: Path, payload: bytes, *, timeout: float = 30.0) -> str:
    """The base64 DER signature of ``payload`` by the key at ``key_path``."""
    env = dict(os.environ)
    src_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH")) if p)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gossamer.identity.signer", str(key_path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(payload), timeout)
    except TimeoutError:
        raise SignError(f"the signer did not finish within {timeout:g} s") from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        message = err.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
        raise SignError(message)
    return out.decode("ascii").strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m gossamer.identity.signer KEY < payload", file=sys.stderr)
        return 2
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(Path(args[0]).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        print(f"signer: error: {exc}", file=sys.stderr)
        return 2
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        print("signer: error: not an EC key", file=sys.stderr)
        return 2
    signature = key.sign(sys.stdin.buffer.read(), ec.ECDSA(hashes.SHA256()))
    sys.stdout.write(base64.b64encode(signature).decode("ascii") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
