"""peer_spiffe_id and is_control_plane_id: reading identities from peer certificates."""

from __future__ import annotations

from typing import Any

from gossamer.identity.credentials import is_control_plane_id, peer_spiffe_id

CP = "spiffe://gossamer.local/ns/gossamer-system/sa/control-plane"


def test_returns_the_spiffe_uri_san() -> None:
    """The first spiffe:// URI SAN of a getpeercert() dict is the identity."""
    cert: dict[str, Any] = {
        "subjectAltName": (
            ("DNS", "localhost"),
            ("URI", "https://example.com"),
            ("URI", "spiffe://gossamer.local/ns/default/sa/catalog"),
        )
    }
    assert peer_spiffe_id(cert) == "spiffe://gossamer.local/ns/default/sa/catalog"


def test_none_without_uri_san_or_cert() -> None:
    """No certificate, an empty (unverified) dict or no URI SAN all give None."""
    assert peer_spiffe_id(None) is None
    assert peer_spiffe_id({}) is None
    assert peer_spiffe_id({"subjectAltName": (("DNS", "localhost"),)}) is None


def test_control_plane_identity_check() -> None:
    """Only the gossamer-system/control-plane ID passes, in the expected trust domain."""
    assert is_control_plane_id(CP)
    assert is_control_plane_id(CP, "gossamer.local")
    assert not is_control_plane_id(CP, "other.domain")
    assert not is_control_plane_id("spiffe://gossamer.local/ns/default/sa/control-plane")
    assert not is_control_plane_id(None)
    assert not is_control_plane_id("not a uri")
