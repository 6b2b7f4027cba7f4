"""Credentials: certificate parsing, install, in-place reload over real TLS, reuse on restart."""

from __future__ import annotations

import asyncio
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from gossamer.identity.credentials import (
    Credentials,
    CredentialsError,
    parse_certificate,
    peer_spiffe_id,
)
from gossamer.identity.spiffe import SpiffeId
from tests.sidecar_harness import MemoryTls
from tests.unit.identity.ca_helpers import FakeCA, workload_id

SERVER_ID = workload_id("inbound")
CLIENT_ID = workload_id("caller")


def make_credentials(tmp_path: Path, ca: FakeCA, uri: str, lifetime: float = 3600.0) -> Credentials:
    creds = Credentials(tmp_path / "work")
    cert, key = ca.issue(uri, lifetime=lifetime)
    key_path = tmp_path / "incoming.key"
    key_path.write_bytes(key)
    creds.install(cert, key_path, ca.root_pem)
    return creds


class TestParseCertificate:
    def test_reads_not_after_and_uri_sans(self) -> None:
        """notAfter and URI SANs match what cryptography reads from the same certificate."""
        ca = FakeCA()
        pem, _ = ca.issue(SERVER_ID, lifetime=1234, dns=("localhost",), ips=("127.0.0.1",))
        info = parse_certificate(pem)
        reference = x509.load_pem_x509_certificate(pem)
        assert info.not_after == reference.not_valid_after_utc.timestamp()
        assert info.uris == (SERVER_ID,)
        assert info.spiffe_id == SpiffeId.parse(SERVER_ID)

    def test_refuses_garbage(self) -> None:
        """Text without a certificate, or with a broken one, raises CredentialsError."""
        with pytest.raises(CredentialsError):
            parse_certificate(b"hello")
        with pytest.raises(CredentialsError):
            parse_certificate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


class TestInstall:
    def test_sets_identity_expiry_and_ready(self, tmp_path: Path) -> None:
        """After install the identity, expiry and readiness reflect the new certificate."""
        ca = FakeCA()
        creds = Credentials(tmp_path / "work")
        assert creds.identity is None and creds.expires_at is None and not creds.ready
        cert, key = ca.issue(SERVER_ID, lifetime=600)
        key_path = creds.workdir / "pending-x.key"
        key_path.write_bytes(key)
        creds.install(cert, key_path, ca.root_pem)
        assert creds.identity == SpiffeId.parse(SERVER_ID)
        assert creds.expires_at is not None
        assert 590 < creds.expires_at - time.time() <= 601
        assert creds.ready

    def test_writes_files_privately(self, tmp_path: Path) -> None:
        """The workdir is 0700, the key 0600, and cert and bundle hold what was installed."""
        ca = FakeCA()
        creds = make_credentials(tmp_path, ca, SERVER_ID)
        assert stat.S_IMODE(creds.workdir.stat().st_mode) == 0o700
        assert stat.S_IMODE(creds.key_path.stat().st_mode) == 0o600
        assert creds.bundle_path.read_bytes() == ca.root_pem
        assert parse_certificate(creds.cert_path.read_bytes()).uris == (SERVER_ID,)
        assert not (tmp_path / "incoming.key").exists()  # moved into the workdir

    def test_expiry_from_control_plane_used_when_earlier(self, tmp_path: Path) -> None:
        """An explicit earlier expiry (from the certificate message) wins over notAfter."""
        ca = FakeCA()
        creds = Credentials(tmp_path / "w")
        cert, key = ca.issue(SERVER_ID, lifetime=600)
        (tmp_path / "k").write_bytes(key)
        soon = time.time() + 100
        creds.install(cert, tmp_path / "k", ca.root_pem, expires=soon)
        assert creds.expires_at == soon

    def test_mismatched_key_is_refused_and_old_cert_kept(self, tmp_path: Path) -> None:
        """A certificate that does not match its key is refused; the old one stays in use."""
        ca = FakeCA()
        creds = make_credentials(tmp_path, ca, SERVER_ID)
        old_cert = creds.cert_path.read_bytes()
        cert, _ = ca.issue(workload_id("other"))
        _, other_key = ca.issue(workload_id("other"))
        (tmp_path / "wrong.key").write_bytes(other_key)
        with pytest.raises(CredentialsError):
            creds.install(cert, tmp_path / "wrong.key", ca.root_pem)
        assert creds.cert_path.read_bytes() == old_cert
        assert creds.identity == SpiffeId.parse(SERVER_ID)

    def test_stored_certificate_is_reused_by_a_new_process(self, tmp_path: Path) -> None:
        """A second Credentials on the same workdir picks up the still-valid certificate."""
        ca = FakeCA()
        first = make_credentials(tmp_path, ca, SERVER_ID)
        second = Credentials(first.workdir)
        assert second.identity == first.identity
        assert second.expires_at == first.expires_at
        assert second.ready

    def test_expired_stored_certificate_is_ignored(self, tmp_path: Path) -> None:
        """An expired certificate left on disk does not count as holding a certificate."""
        ca = FakeCA()
        first = make_credentials(tmp_path, ca, SERVER_ID, lifetime=-10)
        assert not first.ready
        second = Credentials(first.workdir)
        assert not second.has_certificate

    def test_bundle_file_is_trusted_before_join(self, tmp_path: Path) -> None:
        """The settings' CA file is loaded into the contexts before any certificate exists."""
        ca = FakeCA()
        bundle = tmp_path / "root.crt"
        bundle.write_bytes(ca.root_pem)
        creds = Credentials(tmp_path / "w", bundle_file=bundle)
        assert creds.has_bundle
        assert creds.control_context.cert_store_stats()["x509_ca"] == 1


def caller_context(tmp_path: Path, ca: FakeCA) -> ssl.SSLContext:
    """A client context with a mesh certificate for ``CLIENT_ID`` (host names unchecked)."""
    client_cert, client_key = ca.write_leaf(tmp_path, "client", CLIENT_ID)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(cadata=ca.root_pem.decode())
    client.load_cert_chain(client_cert, client_key)
    return client


class TestContexts:
    def test_context_settings(self, tmp_path: Path) -> None:
        """Server and client contexts require peer certificates; clients skip host names."""
        creds = Credentials(tmp_path / "w")
        assert creds.server_context.verify_mode == ssl.CERT_REQUIRED
        assert creds.server_context.minimum_version == ssl.TLSVersion.TLSv1_2
        for ctx in (creds.client_context, creds.control_context):
            assert ctx.verify_mode == ssl.CERT_REQUIRED
            assert ctx.check_hostname is False

    def test_reload_keeps_open_connections_and_new_handshakes_see_new_cert(
        self, tmp_path: Path
    ) -> None:
        """A new cert leaves an open TLS connection working; new handshakes get the new cert."""
        ca = FakeCA()
        creds = make_credentials(tmp_path, ca, SERVER_ID)
        first_der = ssl.PEM_cert_to_DER_cert(creds.cert_path.read_text())
        client = caller_context(tmp_path, ca)

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
            writer.close()

        async def scenario() -> None:
            server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=creds.server_context)
            port = server.sockets[0].getsockname()[1]
            try:
                r1, w1 = await asyncio.open_connection("127.0.0.1", port, ssl=client)
                w1.write(b"one\n")
                assert await asyncio.wait_for(r1.readline(), 5) == b"one\n"
                assert w1.get_extra_info("ssl_object").getpeercert(True) == first_der

                cert, key = ca.issue(SERVER_ID)
                (tmp_path / "renewed.key").write_bytes(key)
                creds.install(cert, tmp_path / "renewed.key", ca.root_pem)
                new_der = ssl.PEM_cert_to_DER_cert(cert.decode())
                assert new_der != first_der

                w1.write(b"two\n")
                assert await asyncio.wait_for(r1.readline(), 5) == b"two\n"
                r2, w2 = await asyncio.open_connection("127.0.0.1", port, ssl=client)
                w2.write(b"three\n")
                assert await asyncio.wait_for(r2.readline(), 5) == b"three\n"
                assert w2.get_extra_info("ssl_object").getpeercert(True) == new_der
                w1.write(b"four\n")
                assert await asyncio.wait_for(r1.readline(), 5) == b"four\n"
                for w in (w1, w2):
                    w.close()
            finally:
                server.close()
                await server.wait_closed()

        asyncio.run(asyncio.wait_for(scenario(), 20))

    def test_server_refuses_clients_without_a_mesh_certificate(self, tmp_path: Path) -> None:
        """The inbound context rejects a client that presents no certificate."""
        ca = FakeCA()
        creds = make_credentials(tmp_path, ca, SERVER_ID)
        bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        bare.check_hostname = False
        bare.load_verify_locations(cadata=ca.root_pem.decode())

        async def scenario() -> bytes:
            async def hello(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                w.write(b"hi\n")
                await w.drain()
                w.close()

            server = await asyncio.start_server(hello, "127.0.0.1", 0, ssl=creds.server_context)
            port = server.sockets[0].getsockname()[1]
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=bare)
                try:
                    return await asyncio.wait_for(reader.read(), 5)
                except (ssl.SSLError, ConnectionError):
                    return b"refused"
                finally:
                    writer.close()
            finally:
                server.close()
                await server.wait_closed()

        # TLS 1.3 finishes the client's side first; the server's refusal then shows up as an
        # alert or a closed stream, never as application data.
        assert asyncio.run(scenario()) in (b"", b"refused")

    def test_peer_spiffe_id_from_a_live_connection(self, tmp_path: Path) -> None:
        """The inbound side reads the caller's SPIFFE ID from the connection's SSL object."""
        ca = FakeCA()
        creds = make_credentials(tmp_path, ca, SERVER_ID)
        client = caller_context(tmp_path, ca)

        async def scenario() -> tuple[bytes, str | None]:
            async def whoami(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                w.write(f"{peer_spiffe_id(w.get_extra_info('ssl_object'))}\n".encode())
                await w.drain()
                w.close()

            server = await asyncio.start_server(whoami, "127.0.0.1", 0, ssl=creds.server_context)
            port = server.sockets[0].getsockname()[1]
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
                line = await asyncio.wait_for(reader.readline(), 5)
                server_id = peer_spiffe_id(writer.get_extra_info("ssl_object"))
                writer.close()
                return line, server_id
            finally:
                server.close()
                await server.wait_closed()

        line, server_id = asyncio.run(scenario())
        assert line == f"{CLIENT_ID}\n".encode()
        assert server_id == SERVER_ID


def test_sidecar_modules_do_not_import_cryptography() -> None:
    """Importing the sidecar's identity and control modules leaves cryptography unloaded."""
    code = (
        "import sys\n"
        "import gossamer.identity.credentials, gossamer.proxy.process.control_client\n"
        "import gossamer.proxy.process.admin, gossamer.proxy.tasks\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'cryptography', 'pydantic', 'typer', 'rich', 'starlette'})\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_certificate_times_convert_like_calendar_timegm() -> None:
    """The sidecar's own UTC conversion (it avoids importing ``calendar``) agrees with it,
    leap days and century years included."""
    import calendar
    import random

    from gossamer.identity.credentials import _utc_seconds

    rng = random.Random(7)
    cases = [(2000, 2, 29, 0, 0, 0), (2100, 3, 1, 0, 0, 0), (1970, 1, 1, 0, 0, 0),
             (2049, 12, 31, 23, 59, 59), (1950, 1, 1, 0, 0, 1)]  # fmt: skip
    cases += [
        (rng.randint(1950, 2200), rng.randint(1, 12), rng.randint(1, 28),
         rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59))
        for _ in range(2000)
    ]  # fmt: skip
    for t in cases:
        assert _utc_seconds(*t) == calendar.timegm((*t, 0, 0, 0)), t


def _session_after_handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> ssl.SSLSession:
    """A real TLS handshake and one round of data over memory BIOs; the client's session
    after it has read what the server sent (TLS 1.3 tickets come after the handshake)."""
    tls = MemoryTls(client_ctx, server_ctx)
    tls.client.write(b"ping")
    tls.pump()
    assert tls.server.read(4) == b"ping"
    tls.server.write(b"pong")
    tls.pump()
    assert tls.client.read(4) == b"pong"
    assert tls.client.version() == "TLSv1.3"
    session = tls.client.session
    assert session is not None
    return session


def test_mesh_server_contexts_send_no_session_tickets(tmp_path: Path) -> None:
    """A client of the inbound side (and of the control stream) is sent no session ticket,
    which it would keep, unused, for as long as the connection lives; a default server
    context in the same handshake does send them (so the check can fail)."""
    from gossamer.control.stream import server_ssl_context

    ca = FakeCA()
    creds = make_credentials(tmp_path, ca, SERVER_ID)
    client = caller_context(tmp_path, ca)
    (tmp_path / "root.pem").write_bytes(ca.root_pem)

    default = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    default.load_cert_chain(creds.cert_path, creds.key_path)
    default.load_verify_locations(cadata=ca.root_pem.decode())
    default.verify_mode = ssl.CERT_REQUIRED
    assert _session_after_handshake(default, client).has_ticket

    assert not _session_after_handshake(creds.server_context, client).has_ticket
    control = server_ssl_context(creds.cert_path, creds.key_path, tmp_path / "root.pem")
    assert not _session_after_handshake(control, client).has_ticket
