"""Client TLS contexts that offer one ALPN protocol (``h2``) with the workload's certificate.

ALPN is a property of an ``ssl.SSLContext``, not of one connection, so the sidecar's shared
mTLS client context (which offers none, meaning HTTP/1.1) cannot serve HTTP/2 upstreams.
``AlpnClientContext`` builds its own context from the files ``Credentials`` keeps in the
sidecar's workdir (``tls.crt``, ``tls.key``, ``bundle.pem``, plus the configured CA file) and
follows certificate renewal without any call from ``Credentials``: before each new connection
it compares the certificate file's identity (inode, size, mtime; ``Credentials.install``
replaces it by rename) with the one it loaded, and builds a fresh context when it changed.
Open connections keep the context they were made with. A half-finished install (new key, old
certificate) fails to load and is retried on the next connection, the old context serving
meanwhile.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from gossamer.identity.credentials import BUNDLE_FILE, CERT_FILE, KEY_FILE

__all__ = ["AlpnClientContext", "CredentialFiles"]

log = logging.getLogger("gossamer.proxy.h2")


@dataclass(frozen=True, slots=True)
class CredentialFiles:
    """Where the workload's certificate, key and trust bundle live."""

    cert: Path
    key: Path
    bundle: Path
    extra_ca: Path | None = None

    @classmethod
    def in_workdir(cls, workdir: Path, extra_ca: Path | None = None) -> CredentialFiles:
        return cls(workdir / CERT_FILE, workdir / KEY_FILE, workdir / BUNDLE_FILE, extra_ca)


class AlpnClientContext:
    """An mTLS client context offering ``protocols`` that tracks the certificate on disk."""

    def __init__(self, files: CredentialFiles, protocols: list[str]) -> None:
        self.files = files
        self.protocols = list(protocols)
        self._context: ssl.SSLContext | None = None
        self._loaded: tuple[int, int, int] | None = None
        self.reloads = 0

    def get(self) -> ssl.SSLContext | None:
        """The context for a new connection (None while there is no certificate yet)."""
        try:
            st = os.stat(self.files.cert)
        except OSError:
            return self._context
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._loaded:
            fresh = self._build()
            if fresh is not None:
                self._context = fresh
                self._loaded = stamp
                self.reloads += 1
        return self._context

    def _build(self) -> ssl.SSLContext | None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # peers are checked by SPIFFE URI SAN, not host name
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(self.protocols)
        try:
            loaded_ca = False
            for bundle in (self.files.bundle, self.files.extra_ca):
                if bundle is not None and bundle.exists():
                    ctx.load_verify_locations(cafile=str(bundle))
                    loaded_ca = True
            if not loaded_ca:
                return None
            ctx.load_cert_chain(self.files.cert, self.files.key)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.info("h2 client context not (re)loaded yet: %s", exc)
            return None
        return ctx
