"""The control plane's TLS server side, whose certificate and trusted roots change while it
listens (a root rotation, ``control/rotation.py``).

A listening socket keeps the ``SSLContext`` it was made with, and a context's trust store only
grows. ``ServingTls`` listens with one context whose SNI callback (called for every handshake,
with or without a server name) hands the connection to the newest context built by
:meth:`ServingTls.reload`: new handshakes present the new certificate and trust only the new
roots; open connections carry on.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

__all__ = ["ServingTls"]


class ServingTls:
    """``context`` to listen with; ``reload()`` after the serving files or roots changed."""

    def __init__(self, build: Callable[[], ssl.SSLContext]) -> None:
        self._build = build
        self.context = build()
        self._current = self.context
        self.context.sni_callback = self._pick

    def reload(self) -> None:
        """Build the context again; handshakes from now on use it."""
        self._current = self._build()

    def _pick(self, conn: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        if self._current is not context:
            conn.context = self._current
