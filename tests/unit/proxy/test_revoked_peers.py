"""A sidecar's side of revocation (issue 11, finding 9): revoked certificates are refused as
callers and as upstreams, and what is open with them is cut when the list changes."""

from __future__ import annotations

from typing import Any

from gossamer.proxy.http1.upstream import refused_peer
from gossamer.proxy.pipeline import inbound
from gossamer.proxy.state import ProxyState
from tests.unit.proxy.test_downstream_errors import (
    FakeTransport,
    OutboundConnection,
    settings,
    snapshot,
)

CATALOG = "spiffe://gossamer.local/ns/default/sa/catalog"


class PeerTransport(FakeTransport):
    def __init__(self, peercert: dict[str, Any] | None) -> None:
        super().__init__()
        self.peercert = peercert

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peercert if name == "peercert" else default


def _cert(serial: str) -> dict[str, Any]:
    return {"subjectAltName": (("URI", CATALOG),), "serialNumber": serial}


def test_an_upstream_with_a_revoked_certificate_is_refused() -> None:
    revoked = frozenset({"A1B"})
    refusal = refused_peer(PeerTransport(_cert("0A1B")), CATALOG, revoked)
    assert refusal is not None
    assert (refusal.status, refusal.cause) == (502, "upstream-revoked")
    assert refused_peer(PeerTransport(_cert("0A1C")), CATALOG, revoked) is None
    mismatch = refused_peer(PeerTransport(_cert("0A1B")), CATALOG + "x", revoked)
    assert mismatch is not None and mismatch.cause == "upstream-identity-mismatch"


def test_a_revoked_caller_is_cut_and_open_connections_too() -> None:
    state = ProxyState(settings())
    state.apply_snapshot(1, snapshot())
    caller = PeerTransport(_cert("BEEF"))
    assert inbound.refuse_revoked(state, caller.peercert, caller) == "BEEF"
    assert not caller.aborted  # nothing revoked yet
    conn = OutboundConnection(state)  # stands for any accepted connection with that caller
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.peer_serial = "BEEF"
    later = snapshot(2)
    later["revoked_serials"] = ["00beef"]
    state.apply_snapshot(2, later)
    assert transport.aborted  # cut when the list changed
    again = PeerTransport(_cert("BEEF"))
    inbound.refuse_revoked(state, again.peercert, again)
    assert again.aborted
    assert state.metrics.errors[("inbound", "revoked-peer")] == 1
