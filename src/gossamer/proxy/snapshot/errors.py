"""Errors of the sidecar's config compilation (the request path's errors are in
``gossamer.protocol.http1.ProxyError``)."""

from __future__ import annotations

__all__ = ["SnapshotError"]


class SnapshotError(ValueError):
    """A control-plane snapshot is malformed; the message names the field path. The proxy
    NACKs the snapshot and keeps its last good config."""
