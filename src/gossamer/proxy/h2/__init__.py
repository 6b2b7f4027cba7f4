"""HTTP/2 and gRPC on the sidecar's data path, with libnghttp2 (cffi) as the codec.

Modules: ``_ffi`` (the C declarations and library), ``_nv`` (header blocks as C arrays),
``session`` (the safe sans-IO session wrapper), ``selfcheck`` (the binding against the loaded
library), ``headers`` (header rules), ``stream`` (one proxied stream), ``downstream`` /
``upstream`` (the protocol classes), ``connection`` (shared settings and batched writes),
``runtime`` (per-sidecar pools; the ALPN ``h2`` client context is the credentials'),
``stats`` (gRPC metrics).

The entry points the HTTP/1.1 listeners call live here, and importing this package loads
nothing from C: the binding is loaded on the first HTTP/2 connection, so a sidecar that only
sees HTTP/1.1 does not pay its memory.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from gossamer.proxy.http1.downstream import DownstreamConnection
    from gossamer.proxy.state import ProxyState

__all__ = [
    "H2_PREFACE",
    "INBOUND_ALPN",
    "close_h2",
    "hand_over_inbound",
    "hand_over_outbound",
    "plain_inbound",
]

log = logging.getLogger("gossamer.proxy.h2")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# What the inbound TLS server offers, in its order of preference.
INBOUND_ALPN = ["h2", "http/1.1", "gossamer-tcp"]


def hand_over_outbound(
    old: DownstreamConnection,
    transport: asyncio.Transport,
    data: bytes,
    pinned: bytes | None = None,
) -> None:
    """The app's first bytes on the outbound port were the HTTP/2 preface: move the
    connection (already accepted and counted by ``old``) to the HTTP/2 path. ``pinned``:
    inside a CONNECT tunnel, the authority every stream goes to."""
    try:
        from gossamer.proxy.h2.downstream import H2Outbound
    except ImportError as exc:  # libnghttp2 missing or unusable: say why, once per connection
        log.error("cannot serve HTTP/2: %s", exc)
        transport.close()
        return
    old.proxy.connections.discard(old)
    old.transport = None
    old.drop_parsers()
    conn = H2Outbound(old.proxy)
    conn.pinned = pinned
    conn.take_over(transport, data)


def hand_over_inbound(proxy: ProxyState, transport: asyncio.BaseTransport) -> bool:
    """If the TLS handshake chose ALPN ``h2``, give the connection to the HTTP/2 inbound
    path and return True; otherwise return False (HTTP/1.1 goes on as before)."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
        return False
    try:
        from gossamer.proxy.h2.downstream import H2Inbound
    except ImportError as exc:
        log.error("cannot serve HTTP/2: %s", exc)
        transport.close()
        return True
    conn = H2Inbound(proxy)
    transport.set_protocol(conn)
    conn.connection_made(transport)
    return True


def plain_inbound(proxy: ProxyState) -> asyncio.Protocol:
    """The protocol for a plaintext (PERMISSIVE) inbound connection that starts with the
    HTTP/2 preface: h2c from outside the mesh, with no peer identity."""
    from gossamer.proxy.h2.downstream import H2Inbound

    return H2Inbound(proxy)


def close_h2(state: ProxyState) -> None:
    """Close the sidecar's HTTP/2 upstream pools (nothing to do if HTTP/2 never ran)."""
    runtime = sys.modules.get("gossamer.proxy.h2.runtime")
    if runtime is not None:
        runtime.close_h2(state)
