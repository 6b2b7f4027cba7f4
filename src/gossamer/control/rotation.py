"""Root rotation: a new root enters every trust bundle, every leaf is re-issued under it, and
the old root leaves, without a failed request (docs/internals.md §11).

``RootRotation`` owns the built-in CA's files during a rotation and the phase it is in. It
does no I/O on the network; the control plane (``control/plane.py``) sends the bundles and the
"renew now" messages and calls :meth:`RootRotation.advance` once every connected proxy has
caught up with the phase:

1. ``trust``: the bundle is the old root and the new one. Every proxy adopts it, so each
   trusts leaves of either root. The old root still signs.
2. ``reissue``: the new root signs. The control plane's own serving certificate is issued
   again under it and every proxy is asked to renew at once; leaves of both roots meet peers
   that trust both.
3. ``retire``: the bundle is the new root alone. Once every proxy has adopted it, the new
   root's key and certificate become ``ca/root.{key,crt}``, the old certificate is kept in
   ``ca/retired/`` and the old key is deleted. The rotation is over.

A phase moves on only when every connected proxy has caught up, so no proxy ever presents a
leaf a peer does not trust. A proxy that is away for a whole phase misses it: it catches up
on reconnecting while the rotation still trusts its certificate, and must join again with a
new token otherwise (as one whose certificate expired).

Files: ``ca/rotation.json`` (the phase and its history), ``ca/next/root.{key,crt}`` (the new
root until it replaces the old), and ``ca/root.crt`` always holds the trust bundle of the
moment (old root first), which is what a sidecar started now is given to trust.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

from gossamer.control.ca import (
    ISSUER_CERT,
    ISSUER_KEY,
    CertificateAuthority,
    import_issuer,
    write_public_file,
)
from gossamer.identity.credentials import bundle_digest, pem_bundle, pem_certificates

__all__ = [
    "Brought",
    "CaRefused",
    "Phase",
    "RootRotation",
    "RotationError",
    "leaf_key_id",
    "root_summary",
]

log = logging.getLogger("gossamer.control")

Phase = Literal["trust", "reissue", "retire"]
_NEXT: dict[Phase, Phase | None] = {"trust": "reissue", "reissue": "retire", "retire": None}
STATE_FILE = "rotation.json"


class RotationError(Exception):
    """A rotation cannot start: one is under way."""


class CaRefused(RotationError):
    """The operator's new CA is refused (the message says why); nothing changed."""


Brought = tuple[bytes, bytes, bytes]  # an operator's CA: its chain, its key, the bundle (PEM)


def _merged(first: bytes, second: bytes) -> bytes:
    """The roots of ``first``, then those of ``second`` not already there (PEM)."""
    seen = pem_certificates(first)
    extra = [body for body in pem_certificates(second) if body not in seen]
    return first + pem_bundle(extra).encode("ascii")


def root_summary(ca: CertificateAuthority) -> dict[str, Any]:
    """The issuing certificate of ``ca``: subject, serial, expiry, key id."""
    cert = ca.issuer
    return {
        "subject": cert.subject.rfc4514_string({NameOID.SERIAL_NUMBER: "serialNumber"}),
        "serial": format(cert.serial_number, "X"),
        "key_id": ca.key_id.hex(),
        "not_after": int(cert.not_valid_after_utc.timestamp()),
    }


class RootRotation:
    """The CA in force, the phase of a rotation (None: none under way) and the new root."""

    def __init__(self, data_dir: Path, current: CertificateAuthority) -> None:
        self._dir = Path(data_dir) / "ca"
        self.current = current
        self.next: CertificateAuthority | None = None
        self.phase: Phase | None = None
        self.started_at: float | None = None
        self.phase_since: float | None = None
        self.last: dict[str, Any] | None = None  # the rotation that ended last
        self.bundle = b""
        self.digest = ""
        self._load()
        self._in_force()

    # ------------------------------------------------------------------ what is in force
    @property
    def signer(self) -> CertificateAuthority:
        """The CA that signs leaves now: the new root from the ``reissue`` phase on."""
        if self.next is not None and self.phase in ("reissue", "retire"):
            return self.next
        return self.current

    def _in_force(self) -> None:
        """Work out ``bundle`` (the trust bundle every proxy is to hold now) and its
        ``digest``, once per change of phase (every proxy's progress is checked against
        them)."""
        if self.next is None or self.phase is None:
            self.bundle = self.current.root_pem
        elif self.phase == "retire":
            self.bundle = self.next.root_pem
        else:
            self.bundle = _merged(self.current.root_pem, self.next.root_pem)
        self.digest = bundle_digest(self.bundle)

    def status(self) -> dict[str, Any]:
        """The phase, since when, and the roots involved (for the API and ``certs``)."""
        out: dict[str, Any] = {"phase": self.phase, "last": self.last}
        if self.phase is not None and self.next is not None:
            out.update(
                started=self.started_at,
                phase_since=self.phase_since,
                old_root=root_summary(self.current),
                new_root=root_summary(self.next),
            )
        return out

    # ------------------------------------------------------------------ moves
    def begin(self, brought: Brought | None = None) -> None:
        """Make a new root (or take the operator's new intermediate, ``brought``: its chain,
        key and bundle as PEM) and enter ``trust``; ``RotationError`` if that cannot be."""
        if self.phase is not None:
            raise RotationError(f"a root rotation is under way (phase {self.phase})")
        next_dir = self._dir / "next"
        shutil.rmtree(next_dir, ignore_errors=True)
        domain = self.current.trust_domain
        if brought is None:
            self.next = CertificateAuthority.create_root(next_dir, domain)
        else:
            try:
                import_issuer(next_dir, *brought)
            except (ValueError, TypeError) as exc:  # refused: nothing changes
                shutil.rmtree(next_dir, ignore_errors=True)
                raise CaRefused(f"the new CA is refused: {exc}") from exc
            self.next = CertificateAuthority.load_dir(next_dir, domain)
        self.started_at = time.time()
        self._enter("trust")

    def advance(self) -> Phase | None:
        """Move to the next phase (the caller saw every proxy catch up); None when over."""
        assert self.phase is not None and self.next is not None
        following = _NEXT[self.phase]
        if following is None:
            self._finish()
            return None
        self._enter(following)
        return following

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        self.phase_since = time.time()
        self._in_force()
        write_public_file(self._dir / "root.crt", self.bundle)
        self._save()
        log.info("root rotation: phase %s (bundle %s)", phase, self.digest[:12])

    def _finish(self) -> None:
        assert self.next is not None
        old, new = self.current, self.next
        retired = self._dir / "retired"
        retired.mkdir(exist_ok=True)
        kept = pem_certificates(new.root_pem)
        for body in pem_certificates(old.root_pem):
            if body not in kept:  # a root that leaves the bundle
                pem = pem_bundle([body]).encode("ascii")
                serial = x509.load_pem_x509_certificate(pem).serial_number
                write_public_file(retired / f"{serial:x}.crt", pem)
        for name in ("root.key", ISSUER_KEY, ISSUER_CERT):  # the old signer's key is gone
            (self._dir / name).unlink(missing_ok=True)
        next_dir = self._dir / "next"
        for path in next_dir.iterdir():  # root.crt (the bundle), and root.key or issuer.*
            os.replace(path, self._dir / path.name)
        shutil.rmtree(next_dir, ignore_errors=True)
        self.last = {"started": self.started_at, "finished": time.time(),
                     "old_root": root_summary(old), "new_root": root_summary(new)}  # fmt: skip
        self.current, self.next = new, None
        self.phase = self.started_at = self.phase_since = None
        self._in_force()
        self._save()
        log.info("root rotation over: %s replaced %s", self.last["new_root"]["subject"],
                 self.last["old_root"]["subject"])  # fmt: skip

    # ------------------------------------------------------------------ files
    def _save(self) -> None:
        state = {"phase": self.phase, "started": self.started_at,
                 "phase_since": self.phase_since, "last": self.last}  # fmt: skip
        write_public_file(self._dir / STATE_FILE, json.dumps(state, indent=2).encode())

    def _load(self) -> None:
        path = self._dir / STATE_FILE
        if not path.exists():
            return
        state = json.loads(path.read_text())
        self.last = state.get("last")
        phase = state.get("phase")
        if phase not in _NEXT:
            return
        self.next = CertificateAuthority.load_dir(self._dir / "next", self.current.trust_domain)
        self.phase, self.started_at = phase, state.get("started")
        self.phase_since = state.get("phase_since")
        log.info("resuming the root rotation in phase %s", phase)


def leaf_key_id(der: bytes) -> bytes | None:
    """The authority key identifier of a DER certificate (which CA signed it); None when it
    has none or does not parse."""
    try:
        cert = x509.load_der_x509_certificate(der)
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    return aki.key_identifier
