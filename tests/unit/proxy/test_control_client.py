"""ControlClient against a fake control plane (real TLS on 127.0.0.1, newline-JSON protocol)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gossamer.identity.credentials import Credentials, bundle_digest, peer_spiffe_id
from gossamer.proxy.process import control_client
from gossamer.proxy.process.control_client import ControlClient
from gossamer.proxy.process.settings import (
    Address,
    ControlSettings,
    IdentitySettings,
    ListenSettings,
    ProxySettings,
    WorkloadSettings,
)
from tests.unit.identity import ca_helpers

FRONTEND_ID = ca_helpers.workload_id("frontend")
TIMEOUT = 10.0


class FakeControlPlane:
    """Just enough of the control plane's stream server to drive a ControlClient."""

    def __init__(
        self,
        ca: Any,
        directory: Path,
        *,
        tokens: dict[str, str] | None = None,
        lifetime: float = 3600.0,
        server_id: str = ca_helpers.CONTROL_PLANE_ID,
    ) -> None:
        self.ca = ca
        self.tokens = dict(tokens or {"tok-1": "frontend"})
        self.lifetime = lifetime
        self.answer_pings = True
        self.refuse = False  # close every new connection at once (a control plane "down")
        self.snapshot_on_hello = True
        self.version = 0
        self.log: list[tuple[str | None, dict[str, Any]]] = []
        self.inbox: asyncio.Queue[tuple[str | None, dict[str, Any]]] = asyncio.Queue()
        self.writers: list[asyncio.StreamWriter] = []
        cert, key = ca.issue(server_id, dns=("localhost",), ips=("127.0.0.1",))
        (directory / "cp.crt").write_bytes(cert)
        (directory / "cp.key").write_bytes(key)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(directory / "cp.crt", directory / "cp.key")
        self.ctx.load_verify_locations(cadata=ca.root_pem.decode())
        self.ctx.verify_mode = ssl.CERT_OPTIONAL
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.drop_all()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def drop_all(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    def send_all(self, msg: dict[str, Any]) -> None:
        for writer in self.writers:
            writer.write(json.dumps(msg).encode() + b"\n")

    def push_snapshot(self, snapshot: dict[str, Any] | None = None) -> int:
        self.version += 1
        self.send_all({"type": "snapshot", "version": self.version, "snapshot": snapshot or {}})
        return self.version

    def count(self, kind: str) -> int:
        return sum(1 for _, msg in self.log if msg["type"] == kind)

    async def expect(
        self, kind: str, timeout: float = TIMEOUT
    ) -> tuple[str | None, dict[str, Any]]:
        """The next message of ``kind`` (others are skipped; all stay in ``log``)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {kind!r} message within {timeout} s; got {self.log}")
            try:
                peer, msg = await asyncio.wait_for(self.inbox.get(), remaining)
            except TimeoutError:
                continue
            if msg["type"] == kind:
                return peer, msg

    def _certificate(self, csr: str, uri: str) -> dict[str, Any]:
        pem = self.ca.sign_csr(csr.encode(), uri, lifetime=self.lifetime)
        return {
            "type": "certificate",
            "certificate": pem.decode(),
            "ca": self.ca.root_pem.decode(),
            "expires": int(time.time() + self.lifetime),
        }

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = peer_spiffe_id(writer.get_extra_info("ssl_object"))
        if self.refuse:
            writer.close()
            return
        self.writers.append(writer)

        def send(msg: dict[str, Any]) -> None:
            writer.write(json.dumps(msg).encode() + b"\n")

        try:
            while line := await reader.readline():
                msg = json.loads(line)
                self.log.append((peer, msg))
                await self.inbox.put((peer, msg))
                kind = msg["type"]
                if kind == "join":
                    service = self.tokens.pop(msg.get("token"), None)
                    if service is None:
                        send({"type": "error", "code": "invalid-token", "message": "no such token"})
                    else:
                        send(self._certificate(msg["csr"], ca_helpers.workload_id(service)))
                    await writer.drain()
                    break
                if kind == "hello" and self.snapshot_on_hello:
                    self.version += 1
                    send({"type": "snapshot", "version": self.version, "snapshot": {"v": 1}})
                elif kind == "csr":
                    assert peer is not None
                    send(self._certificate(msg["csr"], peer))
                elif kind == "ping" and self.answer_pings:
                    send({"type": "pong"})
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            if writer in self.writers:
                self.writers.remove(writer)
            writer.close()


class RecordingHandler:
    """A SnapshotHandler that records what it applied and can be told to refuse."""

    def __init__(self) -> None:
        self.applied: list[tuple[int, dict[str, Any]]] = []
        self.fail_with: str | None = None
        self.subs = ["catalog"]

    def apply_snapshot(self, version: int, snapshot: dict[str, Any]) -> None:
        if self.fail_with is not None:
            raise ValueError(self.fail_with)
        self.applied.append((version, snapshot))

    def subscriptions(self) -> list[str]:
        return list(self.subs)


def workload() -> dict[str, object]:
    return {
        "service": "frontend",
        "namespace": "default",
        "address": "127.0.0.1",
        "inbound_port": None,
        "admin_port": 15000,
        "labels": {"version": "v1"},
    }


class Harness:
    """Settings, credentials, handler and client for one sidecar talking to ``fake``."""

    def __init__(self, tmp_path: Path, ca: Any, fake: FakeControlPlane, **kw: Any) -> None:
        bundle = tmp_path / "root.crt"
        bundle.write_bytes(ca.root_pem)
        self.settings = ProxySettings(
            workload=WorkloadSettings(service="frontend", app=kw.get("app")),
            listen=ListenSettings(),
            control=ControlSettings(
                address=Address("127.0.0.1", fake.port),
                ca_file=bundle,
                join_token=kw.get("token", "tok-1"),
            ),
            identity=IdentitySettings(workdir=tmp_path / "work"),
        )
        self.credentials = Credentials(self.settings.identity.workdir, bundle_file=bundle)
        self.handler = RecordingHandler()
        self.client = ControlClient(self.settings, self.credentials, self.handler, workload)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, fake_kw: dict[str, Any] | None = None, **kw: Any
) -> AsyncIterator[tuple[FakeControlPlane, Harness]]:
    ca = ca_helpers.FakeCA()
    fake = FakeControlPlane(ca, tmp_path, **(fake_kw or {}))
    await fake.start()
    harness = Harness(tmp_path, ca, fake, **kw)
    task = asyncio.create_task(harness.client.run())
    try:
        yield fake, harness
    finally:
        await asyncio.wait_for(harness.client.close(), 5)
        await asyncio.wait_for(task, 5)
        await fake.stop()


def run(coro: Awaitable[None], timeout: float = 30.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout)

    asyncio.run(bounded())


async def wait_until(check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------------ tests


def test_joins_with_token_then_says_hello_with_client_cert(tmp_path: Path) -> None:
    """Without a cert the client joins (token + CSR), installs the cert, then sends hello."""

    async def scenario() -> None:
        async with running(tmp_path) as (fake, h):
            peer, join = await fake.expect("join")
            assert peer is None  # joining happens without a client certificate
            assert join["token"] == "tok-1"
            assert "BEGIN CERTIFICATE REQUEST" in join["csr"]
            peer, hello = await fake.expect("hello")
            assert peer == FRONTEND_ID
            assert hello["proxy_id"] == h.client.proxy_id
            assert hello["proxy_id"].startswith("frontend-")
            assert hello["workload"] == workload()
            assert hello["subscriptions"] == ["catalog"]
            assert hello["cert_expiry"] == h.credentials.expires_at
            assert str(h.credentials.identity) == FRONTEND_ID

    run(scenario())


def test_snapshot_is_applied_and_acked(tmp_path: Path) -> None:
    """A snapshot goes to the handler and is answered with an ack of its version."""

    async def scenario() -> None:
        async with running(tmp_path) as (fake, h):
            _, ack = await fake.expect("ack")
            assert ack == {"type": "ack", "version": 1}
            assert h.handler.applied == [(1, {"v": 1})]
            assert h.client.last_applied_version == 1
            assert h.client.connected
            version = fake.push_snapshot({"outbound": {"services": []}})
            _, ack = await fake.expect("ack")
            assert ack["version"] == version == 2
            assert h.client.last_applied_version == 2

    run(scenario())


def test_handler_error_is_nacked_with_its_message(tmp_path: Path) -> None:
    """When the handler raises, the client nacks with the error and keeps the old version."""

    async def scenario() -> None:
        async with running(tmp_path) as (fake, h):
            await fake.expect("ack")
            h.handler.fail_with = "route 3: unknown backend"
            fake.push_snapshot({"broken": True})
            _, nack = await fake.expect("nack")
            assert nack == {"type": "nack", "version": 2, "error": "route 3: unknown backend"}
            assert h.client.last_applied_version == 1

    run(scenario())


def test_subscribe_sends_a_subscribe_message(tmp_path: Path) -> None:
    """subscribe() on a live stream sends the requested service names at once."""

    async def scenario() -> None:
        async with running(tmp_path) as (fake, h):
            await fake.expect("ack")
            h.client.subscribe(["orders", "payments.default"])
            _, msg = await fake.expect("subscribe")
            assert msg["services"] == ["orders", "payments.default"]

    run(scenario())


def test_pings_and_answers_pings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client pings on its interval and answers a server ping with pong."""
    monkeypatch.setattr(control_client, "PING_INTERVAL", 0.2)

    async def scenario() -> None:
        async with running(tmp_path) as (fake, _h):
            await fake.expect("hello")
            await fake.expect("ping", timeout=3)
            fake.send_all({"type": "ping"})
            await fake.expect("pong", timeout=3)

    run(scenario())


def test_reconnects_after_the_server_drops_without_rejoining(tmp_path: Path) -> None:
    """A dropped stream is re-established with a new hello, same proxy id, and no new join."""

    async def scenario() -> None:
        async with running(tmp_path) as (fake, h):
            _, first = await fake.expect("hello")
            await fake.expect("ack")
            fake.drop_all()
            _, second = await fake.expect("hello")
            assert second["proxy_id"] == first["proxy_id"]
            await fake.expect("ack")
            assert fake.count("join") == 1
            assert h.client.connected

    run(scenario())


def test_silent_server_is_declared_dead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that stops answering is given up after the dead interval and reconnected."""
    monkeypatch.setattr(control_client, "PING_INTERVAL", 0.1)
    monkeypatch.setattr(control_client, "DEAD_AFTER", 0.5)

    async def scenario() -> None:
        async with running(tmp_path) as (fake, _h):
            await fake.expect("ack")
            fake.answer_pings = False
            fake.snapshot_on_hello = False
            await fake.expect("hello", timeout=5)
            await fake.expect("hello", timeout=5)  # and again: the silent stream died
            assert fake.count("join") == 1

    run(scenario())


def test_invalid_token_is_logged_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused join is logged with the server's code and retried with backoff."""
    caplog.set_level(logging.ERROR, logger="gossamer.proxy.process.control_client")

    async def scenario() -> None:
        async with running(tmp_path, token="wrong") as (fake, h):
            await fake.expect("join")
            await fake.expect("join")
            assert fake.count("hello") == 0
            assert not h.credentials.has_certificate
            assert not h.client.connected

    run(scenario())
    assert any("invalid-token" in r.getMessage() for r in caplog.records)


def test_stored_certificate_means_no_join(tmp_path: Path) -> None:
    """A sidecar that already holds a valid certificate goes straight to hello."""

    async def scenario() -> None:
        ca = ca_helpers.FakeCA()
        fake = FakeControlPlane(ca, tmp_path)
        await fake.start()
        h = Harness(tmp_path, ca, fake, token=None)
        cert, key = ca.issue(FRONTEND_ID)
        (tmp_path / "k").write_bytes(key)
        h.credentials.install(cert, tmp_path / "k", ca.root_pem)
        task = asyncio.create_task(h.client.run())
        try:
            peer, _ = await fake.expect("hello")
            assert peer == FRONTEND_ID
            assert fake.count("join") == 0
        finally:
            await h.client.close()
            await task
            await fake.stop()

    run(scenario())


def test_renewal_sends_csr_and_installs_new_cert(tmp_path: Path) -> None:
    """With a 4 s certificate the client renews at about half-life over the stream."""

    async def scenario() -> None:
        async with running(tmp_path, fake_kw={"lifetime": 4.0}) as (fake, h):
            await fake.expect("hello")
            first_expiry = h.credentials.expires_at
            assert first_expiry is not None
            first_cert = h.credentials.cert_path.read_bytes()
            peer, csr = await fake.expect("csr", timeout=8)
            assert peer == FRONTEND_ID
            assert "BEGIN CERTIFICATE REQUEST" in csr["csr"]
            _, status = await fake.expect("status")
            assert status["cert_expiry"] == h.credentials.expires_at
            assert status["cert_expiry"] > first_expiry
            assert h.credentials.cert_path.read_bytes() != first_cert
            assert h.client.renewals >= 1
            assert h.client.connected  # renewal does not drop the stream
            assert fake.count("hello") == 1

    run(scenario())


def test_renewal_due_while_disconnected_happens_on_reconnect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal that falls due while the stream is down is done right after reconnecting."""
    monkeypatch.setattr(control_client, "BACKOFF_MAX", 0.3)

    async def scenario() -> None:
        async with running(tmp_path, fake_kw={"lifetime": 6.0}) as (fake, h):
            await fake.expect("ack")
            first_expiry = h.credentials.expires_at
            assert first_expiry is not None
            fake.refuse = True
            fake.drop_all()
            await asyncio.sleep(max(0.0, (first_expiry - time.time()) / 2 + 0.7))
            assert fake.count("csr") == 0
            fake.refuse = False
            await fake.expect("hello", timeout=5)
            await fake.expect("csr", timeout=5)
            _, status = await fake.expect("status")
            assert status["cert_expiry"] > first_expiry
            assert h.credentials.expires_at == status["cert_expiry"]

    run(scenario())


def test_join_retries_reuse_one_key(tmp_path: Path) -> None:
    """Failed joins are retried with the same CSR instead of a new key each time."""

    async def scenario() -> None:
        async with running(tmp_path, token="wrong") as (fake, _h):
            _, first = await fake.expect("join")
            _, second = await fake.expect("join")
            assert first["csr"] == second["csr"]

    run(scenario())


def test_health_of_the_app_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app is probed by TCP connect; the result is sent after hello and on every change."""
    monkeypatch.setattr(control_client, "HEALTH_INTERVAL", 0.1)

    async def scenario() -> None:
        app = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
        port = app.sockets[0].getsockname()[1]
        async with running(tmp_path, app=Address("127.0.0.1", port)) as (fake, h):
            _, health = await fake.expect("health")
            assert health["healthy"] is True
            app.close()
            await app.wait_closed()
            _, health = await fake.expect("health")
            assert health["healthy"] is False
            assert h.client.healthy is False

    run(scenario())


def test_refuses_a_server_without_the_control_plane_identity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A TLS server with a valid mesh cert but another identity never receives the token."""
    caplog.set_level(logging.WARNING, logger="gossamer.proxy.process.control_client")

    async def scenario() -> None:
        impostor = {"server_id": ca_helpers.workload_id("evil")}
        async with running(tmp_path, fake_kw=impostor) as (fake, h):
            await wait_until(
                lambda: any("not the control plane" in r.getMessage() for r in caplog.records)
            )
            assert fake.log == []
            assert not h.credentials.has_certificate

    run(scenario())


def test_close_stops_run(tmp_path: Path) -> None:
    """close() makes run() return and leaves the client disconnected."""

    async def scenario() -> None:
        ca = ca_helpers.FakeCA()
        fake = FakeControlPlane(ca, tmp_path)
        await fake.start()
        h = Harness(tmp_path, ca, fake)
        task = asyncio.create_task(h.client.run())
        try:
            await fake.expect("ack")
            await asyncio.wait_for(h.client.close(), 5)
            await asyncio.wait_for(task, 5)
            assert task.done() and task.exception() is None
            assert not h.client.connected
        finally:
            await fake.stop()

    run(scenario())


def test_a_bundle_message_is_adopted_and_answered_with_its_digest(tmp_path: Path) -> None:
    """The control plane's bundle replaces the trusted roots; the answer names it (and the
    next hello carries it)."""

    async def scenario() -> None:
        async with running(tmp_path) as (fake, h):
            _, hello = await fake.expect("hello")
            assert hello["bundle_digest"] == bundle_digest(fake.ca.root_pem)
            other = ca_helpers.FakeCA()
            both = fake.ca.root_pem + other.root_pem
            fake.send_all({"type": "bundle", "ca": both.decode()})
            _, applied = await fake.expect("bundle-applied")
            assert applied["digest"] == bundle_digest(both) == h.credentials.bundle_digest
            fake.send_all({"type": "bundle", "ca": "not a bundle"})
            _, refused = await fake.expect("bundle-applied")
            assert refused["digest"] == bundle_digest(both)  # kept what it had

    run(scenario())


def test_renew_asks_for_a_certificate_at_once(tmp_path: Path) -> None:
    """``renew`` (a root rotation) starts a renewal now, long before half-life."""

    async def scenario() -> None:
        async with running(tmp_path) as (fake, h):
            await fake.expect("hello")
            first = h.credentials.cert_path.read_bytes()
            assert fake.count("csr") == 0
            fake.send_all({"type": "renew"})
            await fake.expect("csr", timeout=8)
            await fake.expect("status")
            assert h.credentials.cert_path.read_bytes() != first

    run(scenario())
