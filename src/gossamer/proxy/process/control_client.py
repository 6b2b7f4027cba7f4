"""The sidecar's side of the control-plane stream (docs/internals.md §4).

``ControlClient`` joins the mesh with a one-time token when it has no certificate, then keeps
an mTLS stream open: hello, snapshots answered with ack/nack, on-demand subscriptions, pings,
health reports of the local app, and certificate renewal at half-life. When the stream breaks
it reconnects with exponential backoff and jitter; meanwhile the proxy keeps serving with its
last good config and certificate (both live outside this class).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from gossamer.identity.credentials import (
    Credentials,
    CredentialsError,
    generate_key_and_csr,
    is_control_plane_id,
    peer_spiffe_id,
)
from gossamer.identity.spiffe import DEFAULT_TRUST_DOMAIN
from gossamer.proxy.process.settings import ProxySettings
from gossamer.proxy.tasks import cancel_and_wait, spawn

__all__ = ["ControlClient", "ControlError", "JoinError", "SnapshotHandler"]

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024 * 1024
PING_INTERVAL = 5.0
DEAD_AFTER = 15.0
BACKOFF_START = 0.2
BACKOFF_MAX = 5.0
HEALTH_INTERVAL = 2.0
HEALTH_TIMEOUT = 1.0
CONNECT_TIMEOUT = 10.0
RENEW_TIMEOUT = 30.0


class SnapshotHandler(Protocol):
    """What the control client drives: the proxy's config holder."""

    def apply_snapshot(self, version: int, snapshot: dict[str, Any]) -> None:
        """Adopt a snapshot; raise any ``Exception`` to NACK it (keeping the last good one)."""

    def subscriptions(self) -> list[str]:
        """Service names this proxy wants in its snapshot (sent in every hello)."""


class ControlError(Exception):
    """The control plane misbehaved, refused us, or could not be reached."""


class JoinError(ControlError):
    """The control plane refused to join us (``code`` as sent: invalid-token, bad-csr, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def _encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


class _Backoff:
    def __init__(self) -> None:
        self.attempt = 0

    def reset(self) -> None:
        self.attempt = 0

    def next(self) -> float:
        base = min(BACKOFF_MAX, BACKOFF_START * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 16)
        return float(min(BACKOFF_MAX, base * random.uniform(0.8, 1.2)))


class ControlClient:
    """Keeps this sidecar joined to, configured by and reporting to the control plane."""

    def __init__(
        self,
        settings: ProxySettings,
        credentials: Credentials,
        handler: SnapshotHandler,
        workload: Callable[[], dict[str, object]],
    ) -> None:
        self._settings = settings
        self._credentials = credentials
        self._handler = handler
        self._workload = workload
        self.proxy_id = f"{settings.workload.service}-{os.urandom(4).hex()}"
        self._writer: asyncio.StreamWriter | None = None
        self._up = asyncio.Event()  # the stream is established (hello sent)
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._cert_changed = asyncio.Event()
        self._running = False
        self._last_applied: int | None = None
        self._renew_at: float | None = None
        self._pending_cert: asyncio.Future[dict[str, Any]] | None = None
        self._healthy: bool | None = None
        self._renewals = 0
        self._join_material: tuple[Path, bytes] | None = None
        self.revoked = False  # the control plane revoked our certificate: we stay out
        # Handlers of further message types (the audit shipper's ``audit-ack``).
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {}

    # ------------------------------------------------------------------ state for admin/ready

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    @property
    def last_applied_version(self) -> int | None:
        return self._last_applied

    @property
    def cert_expiry(self) -> float | None:
        return self._credentials.expires_at

    @property
    def healthy(self) -> bool | None:
        """The last result of the app probe (None before the first probe or without an app)."""
        return self._healthy

    @property
    def renewals(self) -> int:
        """How many certificates were renewed over the stream in this process."""
        return self._renewals

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Run until ``close()``: join if needed, keep the stream up, renew, probe health."""
        if self._running or self._stop.is_set():
            return
        self._running = True
        self._schedule_renewal()
        tasks = [
            spawn(self._connect_loop(), name="control-stream"),
            spawn(self._renewal_loop(), name="control-renewal"),
        ]
        if self._settings.workload.app is not None:
            tasks.append(spawn(self._health_loop(), name="control-health"))
        try:
            await self._stop.wait()
        finally:
            await cancel_and_wait(tasks)
            self._close_writer()
            if self._join_material is not None:
                self._join_material[0].unlink(missing_ok=True)
                self._join_material = None
            self._stopped.set()

    async def leave(self, timeout: float = 1.0) -> None:
        """Tell the control plane this proxy is shutting down (best effort, bounded): its
        callers are sent configs without its endpoint now, and the control plane forgets it
        once the stream closes instead of keeping it for a grace period, or for a restarted
        control plane to wait for (docs/internals.md §4)."""
        writer = self._writer
        if writer is None or not self._send({"type": "leave"}):
            return
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.drain(), timeout)

    async def close(self) -> None:
        """Stop ``run()`` and close the stream; returns once everything has stopped."""
        self._stop.set()
        self._close_writer()
        if self._running:
            await self._stopped.wait()

    def request_jwks(self, issuer: str) -> None:
        """Ask the control plane to fetch ``issuer``'s keys again (if connected)."""
        self._send({"type": "jwks-refresh", "issuer": issuer})

    def subscribe(self, names: Iterable[str]) -> None:
        """Ask for more services now (if connected); later hellos carry them via the handler."""
        services = [name for name in names if name]
        if services:
            self._send({"type": "subscribe", "services": services})

    # ------------------------------------------------------------------ connection loop

    async def _connect_loop(self) -> None:
        backoff = _Backoff()
        while not self._stop.is_set():
            if self.revoked:
                log.error(
                    "this proxy's certificate was revoked; it no longer connects to the control "
                    "plane and other proxies refuse it: restart it with a new join token"
                )
                await self._stop.wait()
                return
            try:
                if not self._credentials.has_certificate:
                    await self._join()
                    backoff.reset()
                if await self._session():
                    backoff.reset()
            except JoinError as exc:
                log.error("control plane refused to join this proxy: %s", exc)
            except (OSError, ssl.SSLError, TimeoutError, ControlError, CredentialsError) as exc:
                if self._stop.is_set():
                    return
                log.warning("control plane stream to %s: %s", self._settings.control.address, exc)
            except Exception:
                log.exception("control plane stream failed unexpectedly")
            delay = backoff.next()
            log.debug("reconnecting to the control plane in %.2f s", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        addr = self._settings.control.address
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                addr.host,
                addr.port,
                ssl=self._credentials.control_context,
                server_hostname=addr.host,
                limit=MAX_LINE + 1,
            ),
            CONNECT_TIMEOUT,
        )
        peer = peer_spiffe_id(writer.get_extra_info("ssl_object"))
        identity = self._credentials.identity
        trust_domain = identity.trust_domain if identity is not None else None
        if not is_control_plane_id(peer, trust_domain):
            writer.close()
            raise ControlError(f"server at {addr} is not the control plane (identity {peer!r})")
        return reader, writer

    async def _join(self) -> None:
        token = self._settings.control.join_token
        if not token:
            raise JoinError("no-token", "no certificate and no join token configured")
        # One key and CSR serve every join attempt until one succeeds.
        if self._join_material is None or not self._join_material[0].exists():
            self._join_material = await generate_key_and_csr(
                self._credentials.workdir, self._hint()
            )
        key_path, csr = self._join_material
        reader, writer = await self._open()
        try:
            writer.write(_encode({"type": "join", "token": token, "csr": csr.decode()}))
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), DEAD_AFTER)
        finally:
            writer.close()
        msg = self._decode(line)
        if msg.get("type") == "error":
            raise JoinError(str(msg.get("code")), str(msg.get("message")))
        if msg.get("type") != "certificate":
            raise ControlError(f"unexpected answer to join: {msg.get('type')!r}")
        self._install(msg, key_path)
        self._join_material = None
        log.info("joined the mesh as %s", self._credentials.identity)

    async def _session(self) -> bool:
        """One stream; returns whether it got as far as hearing from the server."""
        expires = self._credentials.expires_at
        if expires is not None and expires <= time.time():
            log.error(
                "certificate expired at %.0f and could not be renewed; the control plane will "
                "refuse it; restart this sidecar with a new join token",
                expires,
            )
        reader, writer = await self._open()
        heard = False
        self._writer = writer
        pinger: asyncio.Task[None] | None = None
        try:
            self._send(
                {
                    "type": "hello",
                    "proxy_id": self.proxy_id,
                    "workload": self._workload(),
                    "subscriptions": list(self._handler.subscriptions()),
                    "cert_expiry": self._expiry_seconds(),
                    "bundle_digest": self._credentials.bundle_digest,
                    "config_version": self._last_applied or 0,
                }
            )
            await writer.drain()
            self._up.set()
            log.info("control plane stream up (%s)", self.proxy_id)
            if self._healthy is not None:
                self._send({"type": "health", "healthy": self._healthy})
            pinger = spawn(self._ping_loop(writer), name="control-ping")
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), DEAD_AFTER)
                except TimeoutError:
                    raise ControlError(f"no word from the server for {DEAD_AFTER:g} s") from None
                except ValueError as exc:  # line over the limit
                    raise ControlError(f"line too long: {exc}") from exc
                if not line:
                    raise ControlError("server closed the stream")
                heard = True
                self._dispatch(self._decode(line))
        finally:
            self._up.clear()
            self._writer = None
            if pinger is not None:
                await cancel_and_wait([pinger])
            writer.close()
            if self._pending_cert is not None and not self._pending_cert.done():
                self._pending_cert.set_exception(ControlError("stream closed during renewal"))
            if not self._stop.is_set():
                log.info("control plane stream down; the proxy keeps its last config")
        return heard

    async def _ping_loop(self, writer: asyncio.StreamWriter) -> None:
        try:
            while not writer.is_closing():
                await asyncio.sleep(PING_INTERVAL)
                writer.write(_encode({"type": "ping"}))
                await writer.drain()
        except OSError:
            return  # the read loop notices the broken stream and reconnects

    def send(self, msg: dict[str, Any]) -> bool:
        """Send ``msg`` on the stream if it is up; False when it is not."""
        return self._up.is_set() and self._send(msg)

    def _send(self, msg: dict[str, Any]) -> bool:
        writer = self._writer
        if writer is None or writer.is_closing():
            return False
        writer.write(_encode(msg))
        return True

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()

    @staticmethod
    def _decode(line: bytes) -> dict[str, Any]:
        if not line:
            raise ControlError("server closed the connection")
        try:
            msg = json.loads(line)
        except ValueError as exc:
            raise ControlError(f"bad JSON from the server: {exc}") from exc
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise ControlError("message from the server is not an object with a type")
        return msg

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "snapshot":
            self._on_snapshot(msg)
        elif kind == "certificate":
            if self._pending_cert is not None and not self._pending_cert.done():
                self._pending_cert.set_result(msg)
            else:
                log.warning("unexpected certificate message from the control plane")
        elif kind == "bundle":
            self._on_bundle(msg)
        elif kind == "renew":  # the control plane wants a certificate from its issuer now
            log.info("the control plane asks for a new certificate now")
            self._renew_at = time.time()
            self._cert_changed.set()
        elif kind == "ping":
            self._send({"type": "pong"})
        elif kind == "error":
            code, message = msg.get("code"), msg.get("message")
            log.error("control plane error %s: %s", code, message)
            if code == "revoked":
                self.revoked = True
            if self._pending_cert is not None and not self._pending_cert.done():
                self._pending_cert.set_exception(ControlError(f"{code}: {message}"))
        elif kind in self.handlers:
            self.handlers[kind](msg)
        elif kind != "pong":
            log.debug("ignoring control message of type %r", kind)

    def _on_bundle(self, msg: dict[str, Any]) -> None:
        """Trust exactly the roots of the control plane's bundle; say which bundle is in force
        (the control plane moves a root rotation on when every proxy trusts the new bundle)."""
        ca = msg.get("ca")
        if not isinstance(ca, str):
            log.error("bundle message without a PEM bundle; ignored")
            return
        try:
            self._credentials.adopt_bundle(ca.encode("ascii"))
        except (CredentialsError, OSError, UnicodeEncodeError) as exc:
            log.error("refused the control plane's trust bundle: %s", exc)
        spawn(self._say_bundle_applied(), name="control-bundle-applied")

    async def _say_bundle_applied(self) -> None:
        await self._credentials.settled()  # every process of the sidecar holds it
        self._send({"type": "bundle-applied", "digest": self._credentials.bundle_digest})

    def _on_snapshot(self, msg: dict[str, Any]) -> None:
        version, snapshot = msg.get("version"), msg.get("snapshot")
        if not isinstance(version, int) or isinstance(version, bool):
            log.error("snapshot without an integer version; ignored")
            return
        if not isinstance(snapshot, dict):
            self._send({"type": "nack", "version": version, "error": "snapshot is not an object"})
            return
        try:
            self._handler.apply_snapshot(version, snapshot)
        except Exception as exc:
            error = str(exc) or type(exc).__name__
            log.warning("refused config version %d: %s", version, error)
            self._send({"type": "nack", "version": version, "error": error})
            return
        self._last_applied = version
        self._send({"type": "ack", "version": version})

    # ------------------------------------------------------------------ certificates

    def _install(self, msg: dict[str, Any], key_path: Path) -> None:
        cert, ca, expires = msg.get("certificate"), msg.get("ca"), msg.get("expires")
        if not isinstance(cert, str) or not isinstance(ca, str):
            raise ControlError("certificate message without certificate/ca")
        exp = float(expires) if isinstance(expires, int | float) else None
        self._credentials.install(cert.encode(), key_path, ca.encode(), expires=exp)
        self._schedule_renewal()

    def _expiry_seconds(self) -> int | None:
        expires = self._credentials.expires_at
        return None if expires is None else int(expires)

    def _hint(self) -> str:
        """Identity hint for a CSR (the control plane decides the real identity)."""
        if self._credentials.identity is not None:
            return str(self._credentials.identity)
        workload = self._settings.workload
        return f"spiffe://{DEFAULT_TRUST_DOMAIN}/ns/{workload.namespace}/sa/{workload.service}"

    def _schedule_renewal(self) -> None:
        expires = self._credentials.expires_at
        if expires is None:
            self._renew_at = None
        else:
            now = time.time()
            self._renew_at = now + max(0.0, expires - now) / 2 * random.uniform(0.9, 1.1)
        self._cert_changed.set()

    async def _renewal_loop(self) -> None:
        retry = _Backoff()
        while True:
            self._cert_changed.clear()
            if self._renew_at is None:
                await self._cert_changed.wait()
                continue
            delay = self._renew_at - time.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._cert_changed.wait(), delay)
                continue
            if not self._up.is_set():
                await self._up.wait()  # retry as soon as the stream is back
                continue
            try:
                await self._renew()
                retry.reset()
            except (OSError, TimeoutError, ControlError, CredentialsError) as exc:
                log.warning("certificate renewal failed, will retry: %s", exc)
                await asyncio.sleep(retry.next())
            except Exception:
                log.exception("certificate renewal failed unexpectedly, will retry")
                await asyncio.sleep(retry.next())

    async def _renew(self) -> None:
        key_path, csr = await generate_key_and_csr(self._credentials.workdir, self._hint())
        try:
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._pending_cert = future
            if not self._send({"type": "csr", "csr": csr.decode()}):
                raise ControlError("stream is down")
            msg = await asyncio.wait_for(future, RENEW_TIMEOUT)
            self._install(msg, key_path)
        finally:
            self._pending_cert = None
            key_path.unlink(missing_ok=True)
        self._renewals += 1
        await self._credentials.settled()  # the control plane counts it in force from status
        self._send({"type": "status", "cert_expiry": self._expiry_seconds()})
        log.info("renewed certificate; new expiry %.0f", self._credentials.expires_at or 0)

    # ------------------------------------------------------------------ health of the app

    async def _health_loop(self) -> None:
        app = self._settings.workload.app
        assert app is not None
        while True:
            healthy = await self._probe(app.host, app.port)
            if healthy != self._healthy:
                self._healthy = healthy
                log.info("local app %s is %s", app, "healthy" if healthy else "unhealthy")
                self._send({"type": "health", "healthy": healthy})
            await asyncio.sleep(HEALTH_INTERVAL)

    @staticmethod
    async def _probe(host: str, port: int) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), HEALTH_TIMEOUT)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
