"""The mesh's trust, proxy by proxy: which bundle each proxy holds and which root signed its
certificate, what it is sent to catch up, and when a root rotation moves on.

``TrustRollout`` holds the ``RootRotation`` (the CA files and the phase, ``control/rotation.py``)
and the registry's records. The control plane tells it what it hears: a proxy's hello (the
digest of the bundle it trusts and the key id that signed the certificate it connected with),
a ``bundle-applied`` answer, a certificate it signed and the ``status`` that says it is
installed, a stream that closed. After each it
sends each proxy what the phase asks of it (the ``bundle`` message, or ``renew`` in the
``reissue`` phase) and moves the rotation on once no connected proxy lags.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gossamer.control.registry import ProxyRecord, Registry
from gossamer.control.rotation import Brought, RootRotation, root_summary

__all__ = ["TrustRollout"]

log = logging.getLogger("gossamer.control")


class TrustRollout:
    """Drives a root rotation through the connected proxies (see the module docstring)."""

    def __init__(
        self, rotation: RootRotation, registry: Registry, on_change: Callable[[], None]
    ) -> None:
        self.rotation = rotation
        self._registry = registry
        self._on_change = on_change  # the serving certificate or the bundle changed

    def begin(self, brought: Brought | None = None) -> None:
        """Start a rotation, to a new root of our own or to the operator's intermediate
        (``RotationError`` if one cannot start now)."""
        self.rotation.begin(brought)
        self._entered()
        self._step()  # with no proxy connected there is nobody to wait for

    def status(self) -> dict[str, Any]:
        out = self.rotation.status()
        signer = self.rotation.signer
        out["issuer"] = {**root_summary(signer), "intermediate": signer.brought}
        out["bundle_digest"] = self.rotation.digest
        out["waiting"] = sorted(record.proxy_id for record in self._lagging())
        out["connected"] = sum(1 for record in self._registry if record.connected)
        return out

    # ------------------------------------------------------------------ what proxies say
    def hello(self, record: ProxyRecord, digest: str | None, key_id: bytes | None) -> None:
        record.bundle_digest, record.leaf_key_id = digest, key_id
        record.renew_asked = False
        self._catch_up(record)
        self._step()

    def bundle_applied(self, record: ProxyRecord, digest: str | None) -> None:
        record.bundle_digest = digest
        if digest != self.rotation.digest:
            log.warning("proxy %s did not adopt the trust bundle (it holds %s)",
                        record.proxy_id, digest)  # fmt: skip
        self._step()

    def signed(self, record: ProxyRecord) -> None:
        """The control plane just signed a certificate for ``record`` (in force once the
        proxy's ``status`` says it installed it)."""
        record.signed_key_id = self.rotation.signer.key_id
        record.renew_asked = False

    def installed(self, record: ProxyRecord) -> None:
        """``record``'s proxy installed the certificate signed last (its ``status``), in
        every process it has: its peers meet that certificate from now on."""
        if record.signed_key_id is not None:
            record.leaf_key_id, record.signed_key_id = record.signed_key_id, None
            self._step()

    def closed(self) -> None:
        self._step()

    # ------------------------------------------------------------------ moving on
    def _lagging(self) -> list[ProxyRecord]:
        """The connected proxies that have not caught up with the phase."""
        phase = self.rotation.phase
        if phase is None:
            return []
        connected = [record for record in self._registry if record.connected]
        if phase == "reissue":
            key_id = self.rotation.signer.key_id
            return [record for record in connected if record.leaf_key_id != key_id]
        digest = self.rotation.digest
        return [record for record in connected if record.bundle_digest != digest]

    def _step(self) -> None:
        while self.rotation.phase is not None and not self._lagging():
            self.rotation.advance()
            self._entered()

    def _entered(self) -> None:
        self._on_change()
        for record in self._registry:
            if record.connected:
                self._catch_up(record)

    def _catch_up(self, record: ProxyRecord) -> None:
        """Send ``record`` what it lacks: the bundle of the moment, or (``reissue``) a
        request to renew now, once."""
        session = record.session
        if session is None or not record.connected:
            return
        digest = record.bundle_digest
        known = digest is not None or self.rotation.phase is not None  # else: said nothing
        if known and digest != self.rotation.digest:
            session.send({"type": "bundle", "ca": self.rotation.bundle.decode("ascii")})
        lacks_leaf = record.leaf_key_id != self.rotation.signer.key_id
        if self.rotation.phase == "reissue" and lacks_leaf and not record.renew_asked:
            record.renew_asked = True
            session.send({"type": "renew"})
