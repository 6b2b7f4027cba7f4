"""HTTP/2 and gRPC on the sidecar's data path, with libnghttp2 (cffi) as the codec.

Modules: ``_ffi`` (the C declarations and library), ``session`` (the safe sans-IO session
wrapper), ``headers`` (header rules), ``stream`` (one proxied stream), ``downstream`` /
``upstream`` (the protocol classes), ``connection`` (shared settings and batched writes),
``runtime`` (per-sidecar pools), ``tls`` (ALPN ``h2`` client contexts), ``stats`` (gRPC
metrics).

Importing this package loads nothing from C: the binding is loaded on first use (the first
HTTP/2 connection), so a sidecar that only sees HTTP/1.1 does not pay its memory.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gossamer.proxy.state import ProxyState

__all__ = ["H2_PREFACE", "close_h2"]

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def close_h2(state: ProxyState) -> None:
    """Close the sidecar's HTTP/2 upstream pools (nothing to do if HTTP/2 never ran)."""
    runtime = sys.modules.get("gossamer.proxy.h2.runtime")
    if runtime is not None:
        runtime.close_h2(state)
