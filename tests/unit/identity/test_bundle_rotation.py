"""A sidecar's trust bundle through a root rotation (control/rotation.py), over real TLS:
a new root is trusted in place, and once the old root leaves the bundle a new handshake with a
leaf of the old root is refused, while a connection opened before carries on and the ALPN the
inbound listener offers survives the rebuild. A worker process's copy follows the workdir."""

from __future__ import annotations

import socket
import ssl
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from gossamer.control.ca import CertificateAuthority, import_issuer
from gossamer.identity.credentials import (
    Credentials,
    CredentialsError,
    bundle_digest,
    pem_certificates,
)
from gossamer.identity.spiffe import SpiffeId
from gossamer.proxy.observe.metrics import render_expiries
from gossamer.proxy.workers.child import WorkerCredentials
from tests.org_ca import organisation
from tests.unit.identity.ca_helpers import FakeCA, workload_id

SERVER_ID = workload_id("orders")
CLIENT_ID = workload_id("frontend")


def _credentials(tmp_path: Path, ca: FakeCA, bundle: bytes) -> Credentials:
    creds = Credentials(tmp_path / "work")
    cert, key = ca.issue(SERVER_ID)
    (tmp_path / "incoming.key").write_bytes(key)
    creds.install(cert, tmp_path / "incoming.key", bundle)
    return creds


def _client(tmp_path: Path, ca: FakeCA, trusted: bytes, name: str) -> ssl.SSLContext:
    """A client presenting a leaf of ``ca`` and trusting ``trusted``, offering h2."""
    cert, key = ca.issue(CLIENT_ID)
    (tmp_path / f"{name}.crt").write_bytes(cert)
    (tmp_path / f"{name}.key").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=trusted.decode())
    context.load_cert_chain(tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
    context.set_alpn_protocols(["h2"])
    return context


class _Server:
    """A TLS server reading its context from ``creds.server_context`` per connection (as the
    inbound listener does); answers each connection with the ALPN it chose."""

    def __init__(self, creds: Credentials | WorkerCredentials) -> None:
        self.creds = creds
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            context = self.creds.server_context  # read per connection, as the listener does
            threading.Thread(target=self._one, args=(conn, context), daemon=True).start()

    def _one(self, conn: socket.socket, context: ssl.SSLContext) -> None:
        try:
            tls = context.wrap_socket(conn, server_side=True)
            tls.sendall((tls.selected_alpn_protocol() or "-").encode() + b"\n")
            while data := tls.recv(100):
                tls.sendall(data)
        except (ssl.SSLError, OSError) as exc:
            self.errors.append(str(exc))
        finally:
            conn.close()

    def connect(self, context: ssl.SSLContext) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        tls = context.wrap_socket(raw)
        assert tls.recv(100) == b"h2\n"  # the handshake held and the ALPN was chosen
        return tls

    def refused(self, context: ssl.SSLContext) -> bool:
        try:
            tls = self.connect(context)
        except (ssl.SSLError, OSError, AssertionError):
            return True
        tls.close()
        return False

    def close(self) -> None:
        self.sock.close()


def test_a_new_root_is_trusted_in_place_and_the_old_one_leaves_with_a_rebuild(
    tmp_path: Path,
) -> None:
    old, new = FakeCA(), FakeCA()
    creds = _credentials(tmp_path, old, old.root_pem)
    creds.offer_alpn(["h2", "http/1.1"])
    server = _Server(creds)
    try:
        from_old = _client(tmp_path, old, old.root_pem + new.root_pem, "old")
        from_new = _client(tmp_path, new, old.root_pem + new.root_pem, "new")
        assert server.refused(from_new)  # the new root is not trusted yet
        first = creds.server_context
        creds.adopt_bundle(old.root_pem + new.root_pem)
        assert creds.server_context is first  # added in place: no rebuild
        assert creds.bundle_digest == bundle_digest(old.root_pem + new.root_pem)
        held = server.connect(from_old)
        server.connect(from_new).close()

        creds.adopt_bundle(new.root_pem)  # the old root leaves
        assert creds.server_context is not first
        assert creds.bundle_digest == bundle_digest(new.root_pem)
        assert server.refused(from_old)
        server.connect(from_new).close()  # ALPN still offered by the rebuilt context
        held.sendall(b"still here")  # opened before the rebuild: carries on
        assert held.recv(100) == b"still here"
        held.close()
        assert pem_certificates((tmp_path / "work" / "bundle.pem").read_bytes()) == (
            pem_certificates(new.root_pem)
        )
    finally:
        server.close()


def test_the_client_contexts_drop_the_old_root_too(tmp_path: Path) -> None:
    """The client, control and ALPN contexts are rebuilt as well: a server presenting a leaf of
    the old root is refused by new connections."""
    old, new = FakeCA(), FakeCA()
    creds = _credentials(tmp_path, old, old.root_pem + new.root_pem)
    alpn_before = creds.alpn_client_context("h2")
    assert alpn_before is not None
    peer = _credentials(tmp_path / "peer", old, old.root_pem + new.root_pem)
    peer.offer_alpn(["h2"])
    server = _Server(peer)
    try:
        assert not server.refused(alpn_before)
        creds.adopt_bundle(new.root_pem)
        alpn_after = creds.alpn_client_context("h2")
        assert alpn_after is not None and alpn_after is not alpn_before
        assert server.refused(alpn_after)
        for context in (creds.client_context, creds.control_context):
            context.set_alpn_protocols(["h2"])
            assert server.refused(context)
    finally:
        server.close()


def test_a_restarted_sidecar_trusts_the_stored_bundle_not_the_bootstrap_root(
    tmp_path: Path,
) -> None:
    """``--ca-file`` is only the root to meet the control plane with: after a rotation the
    stored bundle (the new root alone) is what a restarted sidecar trusts."""
    old, new = FakeCA(), FakeCA()
    creds = _credentials(tmp_path, new, new.root_pem)
    bootstrap = tmp_path / "root.crt"
    bootstrap.write_bytes(old.root_pem)
    again = Credentials(tmp_path / "work", bootstrap)
    assert again.bundle_digest == bundle_digest(new.root_pem)
    assert again.bundle_digest == creds.bundle_digest


def test_a_bundle_that_does_not_load_changes_nothing(tmp_path: Path) -> None:
    ca = FakeCA()
    creds = _credentials(tmp_path, ca, ca.root_pem)
    before = creds.bundle_digest
    for bad in (b"", b"no certificate here",
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"):  # fmt: skip
        with pytest.raises(CredentialsError):
            creds.adopt_bundle(bad)
    assert creds.bundle_digest == before


def test_a_worker_follows_the_workdir_bundle(tmp_path: Path) -> None:
    """A worker's copy (multi-process sidecar) adopts the supervisor's bundle on reload."""
    old, new = FakeCA(), FakeCA()
    creds = _credentials(tmp_path, old, old.root_pem + new.root_pem)
    worker = WorkerCredentials(tmp_path / "work", None)
    assert worker.reload()
    worker.offer_alpn(["h2"])
    server = _Server(worker)
    try:
        from_old = _client(tmp_path, old, old.root_pem + new.root_pem, "old")
        assert not server.refused(from_old)
        creds.adopt_bundle(new.root_pem)
        assert worker.reload()
        assert worker.bundle_digest == creds.bundle_digest
        assert server.refused(from_old)
        server.connect(_client(tmp_path, new, old.root_pem + new.root_pem, "new")).close()
    finally:
        server.close()


def test_the_intermediates_a_certificate_came_with_have_an_expiry(tmp_path: Path) -> None:
    """An operator's intermediate (handed out after the leaf) is in ``expiries`` for the
    metric, as the workload's certificate and the roots are."""
    cert, key, roots, intermediate = organisation(tmp_path / "org")
    import_issuer(tmp_path / "ca", cert.read_bytes(), key.read_bytes(), roots.read_bytes())
    ca = CertificateAuthority.load_dir(tmp_path / "ca", "gossamer.local")
    leaf, leaf_key = ca.issue_keypair(SpiffeId.parse(SERVER_ID), timedelta(hours=1))
    (tmp_path / "incoming.key").write_bytes(leaf_key)
    creds = Credentials(tmp_path / "work")
    creds.install(leaf, tmp_path / "incoming.key", roots.read_bytes())
    kinds = [(kind, index) for kind, index, _ in creds.expiries()]
    assert kinds == [("workload", ""), ("intermediate", "0"), ("root", "0")]
    when = dict(((k, i), t) for k, i, t in creds.expiries())
    assert when[("intermediate", "0")] == intermediate.not_valid_after_utc.timestamp()
    text = render_expiries(creds.expiries()).decode()
    assert 'certificate="intermediate",intermediate="0"' in text
    assert 'certificate="root",root="0"' in text


def test_a_rebuild_cut_short_is_made_again_by_the_next_reload(tmp_path: Path) -> None:
    """A worker that reads the workdir between the supervisor's renames (key and certificate
    not matching) keeps its old contexts and roots; the next reload, on matching files, drops
    the old root (the roots are taken only once every context is made)."""
    old, new = FakeCA(), FakeCA()
    creds = _credentials(tmp_path, old, old.root_pem + new.root_pem)
    worker = WorkerCredentials(tmp_path / "work", None)
    assert worker.reload()
    worker.offer_alpn(["h2"])
    server = _Server(worker)
    try:
        from_old = _client(tmp_path, old, old.root_pem + new.root_pem, "old")
        creds.adopt_bundle(new.root_pem)
        key = (tmp_path / "work" / "tls.key").read_bytes()
        _, other_key = old.issue(SERVER_ID)
        (tmp_path / "work" / "tls.key").write_bytes(other_key)  # mid-rename: no match
        assert not worker.reload()
        assert not server.refused(from_old)  # nothing changed yet
        (tmp_path / "work" / "tls.key").write_bytes(key)
        assert worker.reload()
        assert worker.bundle_digest == creds.bundle_digest
        assert server.refused(from_old)
    finally:
        server.close()
