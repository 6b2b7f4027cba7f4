"""The inbound pipeline: a request from another sidecar (or, under PERMISSIVE, from outside
the mesh) to the local app, for every protocol.

Before a codec hands a request here the listener has detected the protocol, terminated mTLS
and named the caller (``Call.peer``: the SPIFFE ID of its certificate, written into
``x-gossamer-peer-identity`` after any such header from outside was removed). ``admit`` runs
what is decided once for HTTP/1.1 and HTTP/2 alike, in this order:

0. no config yet: 503 ``proxy-not-ready`` (the workload's policies are not known, so no
   request reaches the app unchecked);
1. the request slots (``pipeline.slots``: authentication, authorization, the user's
   filters), a no-op when no config puts anything there;
2. the local rate limit of the service's TrafficPolicy (429 ``rate-limited`` with
   ``retry-after``), per caller identity when configured so.

Then the codec forwards the request to the local app (503 ``no-local-app`` without one).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from gossamer.identity.spiffe import SpiffeId, peer_serial, peer_uri_sans
from gossamer.proxy.pipeline.call import authority_port

if TYPE_CHECKING:
    from gossamer.proxy.observe.metrics import RouteStats
    from gossamer.proxy.pipeline.call import Call
    from gossamer.proxy.snapshot.table import RouteTable
    from gossamer.proxy.state import ProxyState

__all__ = ["admit", "caller", "refuse_revoked"]


def caller(proxy: ProxyState, peercert: Any) -> tuple[str, RouteStats]:
    """The caller of an inbound connection: the SPIFFE ID of its certificate (empty without
    one) and the metrics of requests from it."""
    sans = peer_uri_sans(peercert)
    peer = sans[0] if sans else ""
    try:
        source = SpiffeId.parse(peer).service_account if peer else "unknown"
    except ValueError:
        source = "unknown"
    stats = proxy.metrics.route("inbound", source, proxy.settings.workload.service, peer or "none")
    return peer, stats


def refuse_revoked(proxy: ProxyState, peercert: Any, transport: Any) -> str:
    """The serial of the caller's certificate (empty without one); a caller whose certificate
    the control plane revoked (``RouteTable.revoked``) is cut off before any request."""
    if not peercert:
        return ""
    serial = peer_serial(peercert)
    table = proxy.table
    if table is not None and serial in table.revoked:
        proxy.metrics.error("inbound", "revoked-peer")
        transport.abort()
    return serial


def admit(call: Call, table: RouteTable | None) -> bool:
    """Run the inbound stages for ``call``; False when one of them answered it."""
    if table is None:
        # No config yet: the workload's policies (who may call, what is audited) are not
        # known, so nothing is let through unchecked. Nothing was processed: the caller's
        # sidecar may send the request elsewhere (``retries.UNPROCESSED``).
        call.fail(503, "proxy-not-ready", "no configuration from the control plane yet")
        return False
    if not call.peer and table.port_mtls and table.strict_for(
        authority_port(call.authority, call.scheme)
    ):  # plaintext (no certificate), to a port that takes only mTLS
        call.fail(400, "mtls-required", "this port accepts only mutual TLS from the mesh")
        return False
    stages = table.inbound_stages
    if stages is not None and not stages.request(call):
        return False
    limiter = table.rate_limiter
    if limiter is not None:
        wait = limiter.check(call.peer, time.monotonic())
        if wait > 0:
            retry_after = (b"retry-after", b"%d" % math.ceil(wait))
            call.fail(429, "rate-limited", "local rate limit", (retry_after,))
            return False
    return True
