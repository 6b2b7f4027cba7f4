"""A root rotation in the control plane without sockets (control/rotation.py, control/trust.py):
each phase waits for every connected proxy, sends each what it lacks once, survives a restart
of the control plane, and leaves the new root as the CA with the old one retired."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gossamer.control.ca import CertificateAuthority, generate_csr
from gossamer.control.plane import ControlPlane, Refusal
from gossamer.control.rotation import RotationError
from gossamer.identity.credentials import bundle_digest
from tests.org_ca import key_pem, organisation
from tests.unit.control.test_cp_plane import FakeSession, hello, ident, run_with_plane


def _connect(plane: ControlPlane, name: str) -> FakeSession:
    """A proxy that says hello holding the bundle in force and a leaf of the signer."""
    session = FakeSession()
    message = {**hello(name, f"{name}-1"), "bundle_digest": bundle_digest(plane.bundle)}
    plane.hello(session, ident(name), message, None, plane.ca.key_id)
    return session


def _of(session: FakeSession, kind: str) -> list[dict[str, Any]]:
    return [m for m in session.sent if m["type"] == kind]


def _apply_bundle(plane: ControlPlane, name: str, session: FakeSession) -> None:
    """What a sidecar does with a bundle message: adopt it and say so."""
    record = plane.registry.get(f"{name}-1")
    assert record is not None
    plane.handle(record, {"type": "bundle-applied", "digest": bundle_digest(
        _of(session, "bundle")[-1]["ca"].encode())})  # fmt: skip


def _renew(plane: ControlPlane, name: str, *, installed: bool = True) -> dict[str, Any]:
    """A renewal as a sidecar makes it: csr, then (once installed) status."""
    record = plane.registry.get(f"{name}-1")
    assert record is not None
    _, csr = generate_csr(name)
    plane.handle(record, {"type": "csr", "csr": csr.decode()})
    assert record.session is not None
    sent: list[dict[str, Any]] = record.session.sent  # type: ignore[attr-defined]
    reply = _of_list(sent, "certificate")[-1]
    if installed:
        plane.handle(record, {"type": "status", "cert_expiry": reply["expires"]})
    return reply


def _of_list(sent: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in sent if m["type"] == kind]


def test_each_phase_waits_for_every_connected_proxy(tmp_path: Path) -> None:
    async def body(plane: ControlPlane) -> None:
        changes: list[str | None] = []
        plane.on_trust_change = lambda: changes.append(plane.trust.rotation.phase)
        old = plane.ca
        web, orders = _connect(plane, "web"), _connect(plane, "orders")
        assert not _of(web, "bundle")  # in step with the mesh: nothing to send
        plane.trust.begin()
        status = plane.trust.status()
        assert status["phase"] == "trust" and status["waiting"] == ["orders-1", "web-1"]
        new_root = plane.trust.rotation.next
        assert new_root is not None
        (bundle,) = _of(web, "bundle")
        assert bundle["ca"].encode() == old.root_pem + new_root.root_pem
        # The data dir's root.crt (what a sidecar started now trusts) is that bundle.
        assert (tmp_path / "ca" / "root.crt").read_bytes() == old.root_pem + new_root.root_pem
        assert plane.ca is old  # the old root signs until every proxy trusts the new one

        _apply_bundle(plane, "web", web)
        assert plane.trust.status()["waiting"] == ["orders-1"]
        _apply_bundle(plane, "orders", orders)
        assert plane.trust.rotation.phase == "reissue"
        assert plane.ca is new_root and changes == ["trust", "reissue"]
        assert len(_of(web, "renew")) == len(_of(orders, "renew")) == 1

        # Asked to renew: allowed at once (no renewal spacing), issued by the new root,
        # handed out with the bundle of both roots.
        reply = _renew(plane, "web")
        leaf = x509.load_pem_x509_certificate(reply["certificate"].encode())
        leaf.verify_directly_issued_by(new_root.issuer)
        assert reply["ca"].encode() == old.root_pem + new_root.root_pem
        assert plane.trust.status()["waiting"] == ["orders-1"]
        _renew(plane, "orders", installed=False)
        # Signed is not yet in force: orders may still present its old leaf for a moment.
        assert plane.trust.rotation.phase == "reissue"
        orders_record = plane.registry.get("orders-1")
        assert orders_record is not None
        plane.handle(orders_record, {"type": "status", "cert_expiry": 0})
        assert plane.trust.rotation.phase == "retire"
        assert _of(web, "bundle")[-1]["ca"].encode() == new_root.root_pem
        _apply_bundle(plane, "web", web)
        _apply_bundle(plane, "orders", orders)

        assert plane.trust.rotation.phase is None and changes[-1] is None
        last = plane.trust.status()["last"]
        assert last["new_root"]["serial"] == format(new_root.issuer.serial_number, "X")
        assert plane.bundle == new_root.root_pem
        assert (tmp_path / "ca" / "root.crt").read_bytes() == new_root.root_pem
        retired = tmp_path / "ca" / "retired" / f"{format(old.issuer.serial_number, 'x')}.crt"
        assert retired.read_bytes() == old.root_pem
        assert not (tmp_path / "ca" / "next").exists()
        # A renewal asked by nobody is spaced again.
        with pytest.raises(Refusal) as caught:
            _renew(plane, "web")
        assert caught.value.code == "rate-limited"
        again = CertificateAuthority.load_or_create(tmp_path)
        assert again.issuer == new_root.issuer

    run_with_plane(tmp_path, body)


def test_a_proxy_that_leaves_no_longer_holds_the_rotation_up(tmp_path: Path) -> None:
    async def body(plane: ControlPlane) -> None:
        web, _orders = _connect(plane, "web"), _connect(plane, "orders")
        plane.trust.begin()
        _apply_bundle(plane, "web", web)
        assert plane.trust.rotation.phase == "trust"
        orders = plane.registry.get("orders-1")
        assert orders is not None
        plane.closed(orders)
        assert plane.trust.rotation.phase == "reissue"

    run_with_plane(tmp_path, body)


def test_a_proxy_that_comes_back_is_sent_what_it_missed(tmp_path: Path) -> None:
    """A hello with the old bundle during the rotation gets the bundle; in reissue with a leaf
    of the old root, a renew request too."""

    async def body(plane: ControlPlane) -> None:
        plane.trust.begin()  # nobody connected: the rotation runs to its end at once
        assert plane.trust.rotation.phase is None
        old_digest = bundle_digest(plane.bundle)
        old_key = plane.ca.key_id
        web = _connect(plane, "web")
        plane.trust.begin()
        _apply_bundle(plane, "web", web)
        assert plane.trust.rotation.phase == "reissue"  # web was the only one connected
        web_renewal = plane.registry.get("web-1")
        assert web_renewal is not None and web_renewal.renew_asked
        session = FakeSession()
        message = {**hello("orders", "orders-1"), "bundle_digest": old_digest}
        plane.hello(session, ident("orders"), message, None, old_key)
        assert _of(session, "bundle") and _of(session, "renew")
        assert plane.trust.status()["waiting"] == ["orders-1", "web-1"]
        assert len(_of(web, "renew")) == 1  # asked once, not again for orders' hello

    run_with_plane(tmp_path, body)


def test_a_restarted_control_plane_resumes_the_phase(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    async def first(plane: ControlPlane) -> None:
        web = _connect(plane, "web")
        plane.trust.begin()
        _apply_bundle(plane, "web", web)
        assert plane.trust.rotation.phase == "reissue"
        seen["signer"] = plane.ca.issuer
        seen["bundle"] = plane.bundle

    async def second(plane: ControlPlane) -> None:
        assert plane.trust.rotation.phase == "reissue"
        assert plane.ca.issuer == seen["signer"] and plane.bundle == seen["bundle"]
        with pytest.raises(RotationError):
            plane.trust.begin()

    run_with_plane(tmp_path, first)
    assert json.loads((tmp_path / "ca" / "rotation.json").read_text())["phase"] == "reissue"
    run_with_plane(tmp_path, second)


def test_a_mesh_moves_onto_the_organisations_intermediate(tmp_path: Path) -> None:
    """From the built-in root to an operator's intermediate: the organisation's root joins the
    bundle, the intermediate signs (leaves handed out with it), the built-in root leaves and
    its key is deleted; the data directory then holds the operator's CA as ``--ca-cert``
    would have put it there."""
    cert, key, roots, intermediate = organisation(tmp_path / "files")
    org_root = roots.read_bytes()

    async def body(plane: ControlPlane) -> None:
        old = plane.ca
        web = _connect(plane, "web")
        plane.trust.begin((cert.read_bytes(), key.read_bytes(), org_root))
        assert _of(web, "bundle")[-1]["ca"].encode() == old.root_pem + org_root
        _apply_bundle(plane, "web", web)
        assert plane.ca.issuer == intermediate and plane.ca.brought
        reply = _renew(plane, "web")
        chain = x509.load_pem_x509_certificates(reply["certificate"].encode())
        assert chain[1] == intermediate  # handed out with the intermediate
        chain[0].verify_directly_issued_by(intermediate)
        assert _of(web, "bundle")[-1]["ca"].encode() == org_root
        _apply_bundle(plane, "web", web)
        assert plane.trust.rotation.phase is None
        assert not (tmp_path / "ca" / "root.key").exists()
        assert (tmp_path / "ca" / "root.crt").read_bytes() == org_root
        again = CertificateAuthority.load_or_create(tmp_path)
        assert again.brought and again.issuer == intermediate

    run_with_plane(tmp_path, body)


def test_a_refused_intermediate_changes_nothing(tmp_path: Path) -> None:
    cert, _key, roots, _ = organisation(tmp_path / "files")
    other_key = key_pem(ec.generate_private_key(ec.SECP256R1()))

    async def body(plane: ControlPlane) -> None:
        before = plane.bundle
        with pytest.raises(RotationError) as caught:
            plane.trust.begin((cert.read_bytes(), other_key, roots.read_bytes()))
        assert "the CA key does not match the CA certificate" in str(caught.value)
        assert plane.trust.rotation.phase is None and plane.bundle == before
        assert not (tmp_path / "ca" / "next").exists()

    run_with_plane(tmp_path, body)
