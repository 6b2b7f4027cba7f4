"""Certificate revocation: the ledger of what the CA issued, what is revoked, and the pace
of renewals (docs/internals.md §11).

Every certificate the control plane signs is recorded (serial, SPIFFE ID, expiry) in the
store, and tied to its proxy when the proxy says hello with it. Revoking a proxy revokes every
unexpired certificate tied to it; revoking an identity (done by the operator, and by the
control plane when the last Service using the identity is deleted) revokes every unexpired
certificate for it. A revoked certificate:

- is refused at ``hello`` (code ``revoked``) and cannot be renewed, so a revoked sidecar is
  out until an operator gives it a new join token;
- is listed in every proxy's snapshot (``revoked_serials``) until it expires, so sidecars
  refuse it on their inbound listeners and as an upstream, and close connections open with it:
  revocation takes effect in the data plane within one push, not at certificate expiry.

The list stays small: an entry leaves it when the certificate expires (certificates live
hours, not years). Renewals are also paced per proxy (``renewal_spacing``): a proxy may not
ask for certificates faster than its lifetime warrants, whatever its streams' rate limits.
"""

from __future__ import annotations

import time
from datetime import timedelta

from cryptography import x509

from gossamer.control.store import IssuedCertificate, Store
from gossamer.identity.spiffe import canonical_serial

__all__ = ["Revocations", "renewal_spacing"]

MIN_RENEWAL_SPACING = 1.0
MAX_RENEWAL_SPACING = 300.0


def renewal_spacing(lifetime: timedelta) -> float:
    """The least time between two renewals of one proxy: an eighth of the certificate's
    lifetime (a sidecar renews at half-life), between 1 s and 5 minutes."""
    return min(MAX_RENEWAL_SPACING, max(MIN_RENEWAL_SPACING, lifetime.total_seconds() / 8))


class Revocations:
    """The revoked serials in memory (for checks and snapshots) over the store's ledger."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._revoked: dict[str, float] = {
            cert.serial: cert.not_after for cert in store.certificates(revoked_only=True)
        }
        self._serials: tuple[str, ...] = ()
        self._refresh()

    def issued(self, cert_pem: bytes, identity: str, proxy_id: str | None = None) -> None:
        """Record a certificate just signed for ``identity`` (and ``proxy_id`` when known)."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        not_after = cert.not_valid_after_utc.timestamp()
        self._store.record_certificate(
            canonical_serial(cert.serial_number), identity, not_after, proxy_id
        )

    def presented(self, serial: str, identity: str, not_after: float, proxy_id: str) -> None:
        """Tie the certificate a proxy said hello with to that proxy."""
        self._store.record_certificate(serial, identity, not_after, proxy_id)

    def is_revoked(self, serial: str | None) -> bool:
        return serial is not None and serial in self._revoked

    def revoke(
        self, *, reason: str, proxy_id: str | None = None, identity: str | None = None
    ) -> list[str]:
        """Revoke the certificates of a proxy or an identity; return the serials revoked."""
        serials = self._store.revoke_certificates(
            reason=reason, proxy_id=proxy_id, identity=identity
        )
        if serials:
            by_serial = {cert.serial: cert.not_after for cert in self._store.certificates()}
            for serial in serials:
                self._revoked[serial] = by_serial.get(serial, time.time())
            self._refresh()
        return serials

    def known_proxy(self, proxy_id: str) -> bool:
        """Whether an unexpired certificate was ever tied to ``proxy_id``."""
        return self._store.has_certificates_of(proxy_id)

    def listed(self) -> list[IssuedCertificate]:
        """The revoked certificates that have not expired yet (for the API)."""
        return self._store.certificates(revoked_only=True)

    @property
    def serials(self) -> tuple[str, ...]:
        """Unexpired revoked serials, sorted: what snapshots carry."""
        if self._revoked and min(self._revoked.values()) < time.time():
            self._refresh()
        return self._serials

    def _refresh(self) -> None:
        now = time.time()
        for serial in [s for s, not_after in self._revoked.items() if not_after < now]:
            del self._revoked[serial]
        self._serials = tuple(sorted(self._revoked))
