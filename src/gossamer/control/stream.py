"""The sidecar stream server: TLS, newline-delimited JSON (docs/internals.md §4).

Owns the listening socket, the per-connection read loop (line limit, dead-peer timeout,
malformed input answered with an error instead of a crash), the peer certificate's SPIFFE ID,
and the writer side of each session. What messages mean is decided by
:class:`~gossamer.control.plane.ControlPlane`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gossamer.control.plane import ControlPlane, Refusal
from gossamer.control.registry import ProxyRecord
from gossamer.control.rotation import leaf_key_id
from gossamer.identity.credentials import no_session_tickets
from gossamer.identity.spiffe import SpiffeId, canonical_serial

__all__ = [
    "FIRST_LINE",
    "MAX_LINE",
    "StreamServer",
    "StreamSession",
    "peer_certificate",
    "peer_spiffe_id",
    "server_ssl_context",
]

log = logging.getLogger("gossamer.control.stream")

MAX_LINE = 16 * 1024 * 1024  # after hello: a certified sidecar's lines
FIRST_LINE = 256 * 1024  # join or hello, from a peer not yet known: small
MAX_QUEUED_BYTES = 32 * 1024 * 1024  # a peer that does not read is dropped past this
MAX_CONNECTIONS = 20_000
HANDSHAKE_TIMEOUT = 10.0
# Messages that cost the control plane real work (a whole snapshot, a signature): per stream,
# a burst of RATE_BURST, then RATE_PER_SECOND; beyond, an error ``rate-limited``.
RATED = frozenset({"subscribe", "csr", "jwks-refresh"})
RATE_BURST = 20.0
RATE_PER_SECOND = 5.0
_CLOSE = object()


def server_ssl_context(cert: Path, key: Path, root: Path) -> ssl.SSLContext:
    """TLS server context: our serving cert; client certs requested, optional, checked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cafile=root)
    context.verify_mode = ssl.CERT_OPTIONAL
    no_session_tickets(context)  # a sidecar keeps its stream open: tickets would only sit there
    return context


def peer_spiffe_id(peercert: Mapping[str, Any] | None) -> SpiffeId | None:
    """The SPIFFE ID from a verified peer cert (``getpeercert()``); None without exactly one."""
    if not peercert:
        return None
    uris = [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]
    if len(uris) != 1:
        return None
    try:
        return SpiffeId.parse(uris[0])
    except ValueError:
        return None


def peer_certificate(peercert: Mapping[str, Any] | None) -> tuple[str, float] | None:
    """The serial (canonical hex) and expiry (unix time) of a verified peer cert."""
    if not peercert:
        return None
    try:
        serial = canonical_serial(str(peercert["serialNumber"]))
        return serial, float(ssl.cert_time_to_seconds(str(peercert["notAfter"])))
    except (KeyError, ValueError):
        return None


def _encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class StreamSession:
    """The writing half of one connection; messages are queued and written in order. The
    queue is bounded in bytes: a peer that stops reading is dropped, not buffered for."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._queued = 0  # bytes queued, not yet written
        self._closed = False
        self._task = asyncio.create_task(self._run(), name="control-stream-writer")

    def send(self, message: Mapping[str, Any]) -> None:
        if self._closed:
            return
        data = _encode(message)
        self._queued += len(data)
        if self._queued > MAX_QUEUED_BYTES:
            log.warning("dropping a stream that does not read (%d bytes queued)", self._queued)
            self._closed = True
            self._task.cancel()
            self._writer.transport.abort()
            return
        self._queue.put_nowait(data)

    def close(self) -> None:
        """Flush what is queued, then close the connection."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_CLOSE)

    async def finish(self) -> None:
        """Close after flushing and wait until done (bounded)."""
        self.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=5.0)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
        self._writer.close()

    async def _run(self) -> None:
        try:
            while True:
                data = await self._queue.get()
                if data is _CLOSE:
                    break
                assert isinstance(data, bytes)
                self._writer.write(data)
                await self._writer.drain()
                self._queued -= len(data)
        except (ConnectionError, ssl.SSLError, RuntimeError) as exc:
            log.debug("stream write failed: %s", exc)
        except asyncio.CancelledError:
            pass
        finally:
            self._closed = True
            self._writer.close()


class _Malformed(Exception):
    pass


class StreamServer:
    """Accepts sidecar streams and feeds their messages to the control plane."""

    def __init__(self, plane: ControlPlane, host: str, port: int, context: ssl.SSLContext) -> None:
        self._plane = plane
        self._host, self._port = host, port
        self._context = context
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        """Listen; return the bound (host, port)."""
        self._server = await asyncio.start_server(
            self._accept,
            self._host,
            self._port,
            ssl=self._context,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            limit=FIRST_LINE,  # raised to MAX_LINE once the peer said hello
        )
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=5.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= MAX_CONNECTIONS:
            log.warning("refusing a stream: %d connections open", len(self._connections))
            writer.transport.abort()
            return
        self._connections.add(task)
        session = StreamSession(writer)
        peercert = writer.get_extra_info("peercert")
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            await self._serve(reader, session, peer_spiffe_id(peercert),
                              peer_certificate(peercert), der)  # fmt: skip
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("stream connection failed")
        finally:
            self._connections.discard(task)
            await session.finish()

    async def _read(self, reader: asyncio.StreamReader) -> dict[str, Any] | None:
        """The next message; None at EOF or when the peer was silent too long."""
        try:
            line = await asyncio.wait_for(
                reader.readuntil(b"\n"), timeout=self._plane.settings.peer_timeout
            )
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return None
        except TimeoutError:
            log.info("closing a stream silent for %.0f s", self._plane.settings.peer_timeout)
            return None
        except (asyncio.LimitOverrunError, ValueError) as exc:  # ValueError: over the limit
            limit = getattr(reader, "_limit", MAX_LINE)
            raise Refusal("line-too-long", f"lines are limited to {limit} bytes") from exc
        try:
            message = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Malformed(f"malformed JSON: {exc}") from exc
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise _Malformed("each line must be a JSON object with a string 'type'")
        return message

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        session: StreamSession,
        peer: SpiffeId | None,
        certificate: tuple[str, float] | None,
        der: bytes | None,
    ) -> None:
        try:
            first = await self._read(reader)
        except _Malformed as exc:
            session.send(Refusal("bad-request", str(exc)).to_json())
            return
        except Refusal as refusal:
            session.send(refusal.to_json())
            return
        if first is None:
            return
        try:
            if first["type"] == "join":
                session.send(self._plane.join(first))
                return
            if first["type"] != "hello":
                raise Refusal("bad-request", "the first message must be join or hello")
            key_id = leaf_key_id(der) if der else None
            record = self._plane.hello(session, peer, first, certificate, key_id)
        except Refusal as refusal:
            log.info("refused %s: %s %s", peer, refusal.code, refusal.message)
            session.send(refusal.to_json())
            return
        if hasattr(reader, "_limit"):
            reader._limit = MAX_LINE  # a certified sidecar: its lines may be large (asyncio's own)
        pinger = asyncio.create_task(self._ping(session), name="control-stream-ping")
        try:
            await self._established(reader, session, record)
        finally:
            pinger.cancel()
            self._plane.closed(record)

    async def _established(
        self, reader: asyncio.StreamReader, session: StreamSession, record: ProxyRecord
    ) -> None:
        bucket = _Bucket()
        while record.session is session:
            try:
                message = await self._read(reader)
            except _Malformed as exc:
                session.send(Refusal("bad-request", str(exc)).to_json())
                continue
            except Refusal as refusal:
                session.send(refusal.to_json())
                return
            if message is None:
                return
            kind = message["type"]
            if kind == "ping":
                session.send({"type": "pong"})
            elif kind == "pong":
                continue
            elif kind in RATED and not bucket.take():
                session.send(Refusal("rate-limited", f"too many {kind} messages").to_json())
            else:
                try:
                    self._plane.handle(record, message)
                except Refusal as refusal:
                    session.send(refusal.to_json())

    async def _ping(self, session: StreamSession) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(self._plane.settings.ping_interval)
                session.send({"type": "ping"})


class _Bucket:
    """A token bucket for one stream's costly messages."""

    def __init__(self) -> None:
        self.tokens = RATE_BURST
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(RATE_BURST, self.tokens + (now - self.at) * RATE_PER_SECOND)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
