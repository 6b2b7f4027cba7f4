"""Revocation (issue 11 finding 9): renewal only while admitted, revoked certificates refused
at hello and listed in every snapshot, renewals paced; the ledger survives a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from gossamer.config.base import ResourceKey
from gossamer.control.ca import generate_csr
from gossamer.control.plane import ControlPlane, Refusal
from gossamer.control.revocation import renewal_spacing
from gossamer.identity.spiffe import canonical_serial, peer_serial
from tests.unit.control.test_cp_plane import (
    FakeSession,
    hello,
    ident,
    run_with_plane,
    service_doc,
    settle,
)


def _csr() -> str:
    return generate_csr("spiffe://gossamer.local/ns/default/sa/x")[1].decode()


def _serial_of(message: dict[str, Any]) -> tuple[str, float]:
    cert = x509.load_pem_x509_certificate(message["certificate"].encode())
    return canonical_serial(cert.serial_number), cert.not_valid_after_utc.timestamp()


def _join(plane: ControlPlane, service: str) -> tuple[str, float]:
    token, _ = plane.create_join_token(service, "default", 60)
    return _serial_of(plane.join({"type": "join", "token": token, "csr": _csr()}))


def _with_plane(tmp_path: Path, body: Any) -> None:
    run_with_plane(tmp_path, body, endpoint_grace=30.0)


def test_renewal_refused_once_the_service_is_deleted(tmp_path: Path) -> None:
    """Finding 9: a proxy kept renewing after its Service was deleted; now the deletion
    revokes the identity, cuts the stream and drops the endpoint at once."""

    async def body(plane: ControlPlane) -> None:
        plane.apply(service_doc("web"))
        session = FakeSession()
        record = plane.hello(session, ident("web"), hello("web", "web-1", port=4000),
                             _join(plane, "web"))  # fmt: skip
        plane.handle(record, {"type": "csr", "csr": _csr()})
        assert session.sent[-1]["type"] == "certificate"  # renewal works while admitted
        plane.delete(ResourceKey("Service", "default", "web"))
        assert session.closed
        assert session.sent[-1] == {
            "type": "error", "code": "revoked",
            "message": "certificate revoked: service default/web deleted",
        }  # fmt: skip
        assert plane.registry.endpoints_of("default", "web") == []  # no grace period
        record.renewed_at = None  # not the pace: the revocation refuses it
        with pytest.raises(Refusal) as refused:
            plane.handle(record, {"type": "csr", "csr": _csr()})
        assert refused.value.code == "revoked"

    _with_plane(tmp_path, body)


def test_revoked_certificate_refused_at_hello_even_after_a_restart(tmp_path: Path) -> None:
    """The ledger is in the store: a control plane restarted refuses the certificate too."""
    state: dict[str, Any] = {}

    async def first(plane: ControlPlane) -> None:
        state["cert"] = _join(plane, "web")
        plane.hello(FakeSession(), ident("web"), hello("web", "web-1"), state["cert"])
        assert plane.revoke(proxy_id="web-1", reason="stolen laptop") == [state["cert"][0]]

    async def second(plane: ControlPlane) -> None:
        with pytest.raises(Refusal) as refused:
            plane.hello(FakeSession(), ident("web"), hello("web", "web-1"), state["cert"])
        assert refused.value.code == "revoked"
        listed = plane.revocations.listed()
        assert [(c.serial, c.proxy_id, c.reason) for c in listed] == [
            (state["cert"][0], "web-1", "stolen laptop")
        ]
        other = _join(plane, "web")  # a new join token admits a new certificate
        plane.hello(FakeSession(), ident("web"), hello("web", "web-2"), other)

    _with_plane(tmp_path, first)
    _with_plane(tmp_path, second)


def test_every_snapshot_lists_revoked_serials(tmp_path: Path) -> None:
    """Other proxies learn the revoked serial with their next snapshot."""

    async def body(plane: ControlPlane) -> None:
        watcher = FakeSession()
        plane.hello(watcher, ident("front"), hello("front", "front-1"), _join(plane, "front"))
        cert = _join(plane, "cat")
        plane.hello(FakeSession(), ident("cat"), hello("cat", "cat-1", port=4000), cert)
        await settle()
        assert watcher.snapshots()[-1]["snapshot"]["revoked_serials"] == []
        plane.revoke(proxy_id="cat-1", reason="test")
        await settle()
        assert watcher.snapshots()[-1]["snapshot"]["revoked_serials"] == [cert[0]]

    _with_plane(tmp_path, body)


def test_renewals_are_paced_per_proxy(tmp_path: Path) -> None:
    """A second renewal sooner than an eighth of the lifetime is refused, whatever the
    stream's rate limit allows."""

    async def body(plane: ControlPlane) -> None:
        record = plane.hello(FakeSession(), ident("web"), hello("web", "web-1"),
                             _join(plane, "web"))  # fmt: skip
        plane.handle(record, {"type": "csr", "csr": _csr()})
        with pytest.raises(Refusal) as refused:
            plane.handle(record, {"type": "csr", "csr": _csr()})
        assert refused.value.code == "rate-limited"

    _with_plane(tmp_path, body)


def test_renewal_spacing_bounds() -> None:
    from datetime import timedelta

    assert renewal_spacing(timedelta(seconds=4)) == 1.0
    assert renewal_spacing(timedelta(minutes=16)) == 120.0
    assert renewal_spacing(timedelta(hours=24)) == 300.0


def test_serial_forms_agree() -> None:
    """The control plane's serials and the sidecar's reading of ``getpeercert()`` match."""
    assert canonical_serial(0x0A1B) == "A1B"
    assert peer_serial({"serialNumber": "0A1B"}) == "A1B"
    assert canonical_serial("0a1b") == "A1B"
    assert peer_serial({}) == ""
