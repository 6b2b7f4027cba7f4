"""mTLS for opaque TCP between sidecars (ALPN ``gossamer-tcp``), with half-close.

asyncio's and uvloop's TLS transports cannot half-close: a received close_notify shuts the
whole connection, and ``write_eof`` is not implemented. An opaque relay must carry "the client
is done sending, the server still answers", so ``TlsStream`` runs TLS itself through memory BIOs
on a plain TCP transport and presents a transport to one relay end: ``write_eof`` sends
close_notify (and a TCP FIN) while reading goes on; a received close_notify is an EOF for the
relay end, and the stream can still write. A TCP FIN without close_notify is a truncation and
is reported as a reset.

Also here: ``offered_alpn`` (the ALPN names in a ClientHello, read from a peek of the first
bytes, so the inbound listener can hand ``gossamer-tcp`` connections to the relay before the
handshake). The client context offering ``gossamer-tcp`` is the credentials' own
(``Credentials.alpn_client_context``), which follows certificate renewals in place.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any, Protocol, cast

from gossamer.identity.spiffe import peer_serial, peer_uri_sans

__all__ = [
    "TCP_ALPN",
    "TlsFailure",
    "TlsStream",
    "offered_alpn",
]

log = logging.getLogger("gossamer.proxy")

TCP_ALPN = "gossamer-tcp"
HANDSHAKE_TIMEOUT = 10.0
RAW_HIGH_WATER = 64 * 1024


class TlsFailure(Exception):
    """The TLS handshake failed; ``cause`` is an ``x-gossamer-error``-style word."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause = cause
        self.detail = detail


class BufferSource(Protocol):
    """Where a stream reads ciphertext into (a buffer shared by every relay of one proxy)."""

    cipher: memoryview


class AppProtocol(Protocol):
    """The relay end a ``TlsStream`` delivers plaintext to (an ``asyncio.BufferedProtocol``)."""

    def connection_made(self, transport: Any) -> None: ...
    def get_buffer(self, sizehint: int) -> memoryview: ...
    def buffer_updated(self, nbytes: int) -> None: ...
    def eof_received(self) -> bool | None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...


class TlsStream(asyncio.BufferedProtocol):
    """TLS over a plain TCP transport; a transport (with half-close) for one relay end.

    ``ready`` resolves once the handshake is done and, for a client, the peer carries
    ``expect_identity``; it fails with ``TlsFailure``. ``attach`` then connects the relay end.
    """

    copies_writes = True  # write() encrypts at once: the caller may reuse its buffer

    def __init__(
        self,
        context: ssl.SSLContext,
        buffers: BufferSource,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        expect_identity: str | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side,
            server_hostname=None if server_side else server_hostname,
        )
        # SSLObject.read(n, buffer) decrypts into ``buffer`` and returns a count
        self._read_into: Callable[[int, memoryview], int] = cast(Any, self._obj.read)
        self._buffers = buffers
        self._expect = expect_identity
        self._timeout = handshake_timeout
        self._timer: asyncio.TimerHandle | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.raw: asyncio.Transport | None = None
        self.app: AppProtocol | None = None
        self.peer_identity = ""
        self.peer_serial = ""  # of the peer's certificate, after the handshake
        self._handshaking = True
        self._read_paused = False
        self._read_closed = False  # close_notify received
        self._raw_eof = False  # TCP FIN received
        self._eof_wanted = False  # the app asked for write_eof
        self._write_closed = False  # close_notify sent
        self._closed = False

    # === raw transport side ===

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw: asyncio.Transport = transport  # type: ignore[assignment]
        self.raw = raw
        raw.set_write_buffer_limits(high=RAW_HIGH_WATER)
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._timed_out)
        self._handshake()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffers.cipher

    def buffer_updated(self, nbytes: int) -> None:
        self._incoming.write(self._buffers.cipher[:nbytes])
        if self._handshaking:
            self._handshake()
        else:
            self._deliver()

    def eof_received(self) -> bool:
        if self._handshaking:
            self._fail(TlsFailure("connect-failed", "peer closed during the TLS handshake"))
            return False
        self._raw_eof = True
        self._deliver()
        return True

    def _check_truncation(self) -> None:
        # A FIN without close_notify (once everything before it was read): the peer died or
        # the stream was cut. The relay end must see a reset, not a clean end of data.
        if self._read_closed or self._read_paused or self.app is None or self._closed:
            return
        log.debug("TLS peer closed without close_notify")
        if self.raw is not None:
            self.raw.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._handshaking:
            self._handshaking = False
            if not self.ready.done():
                detail = str(exc) if exc else "connection closed during the TLS handshake"
                self.ready.set_exception(TlsFailure("connect-failed", detail))
            return
        app = self.app
        if app is not None:
            self.app = None
            if exc is None and not self._read_closed:
                exc = ConnectionResetError("TLS stream closed without close_notify")
            app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()

    # === handshake ===

    def _handshake(self) -> None:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self._flush()
            self._fail(TlsFailure("connect-failed", f"TLS: {exc}"))
            return
        self._flush()
        self._handshaking = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        peercert = self._obj.getpeercert()
        sans = peer_uri_sans(peercert)
        self.peer_identity = sans[0] if sans else ""
        self.peer_serial = peer_serial(peercert)
        if self._expect is not None and self._expect not in sans:
            got = ", ".join(sans) or "no SPIFFE ID"
            self._fail(
                TlsFailure("upstream-identity-mismatch", f"expected {self._expect}, got {got}")
            )
            return
        if not self.ready.done():
            self.ready.set_result(None)

    def _timed_out(self) -> None:
        self._timer = None
        if self._handshaking:
            self._fail(TlsFailure("connect-failed", "TLS handshake timed out"))

    def _fail(self, failure: TlsFailure) -> None:
        self._handshaking = False
        if not self.ready.done():
            self.ready.set_exception(failure)
        if self.raw is not None:
            self.raw.abort()

    def attach(self, app: AppProtocol) -> None:
        """Connect the relay end (after ``ready``) and hand it what already arrived."""
        self.app = app
        app.connection_made(self)
        if self._closed:
            return
        self._deliver()

    # === plaintext toward the relay end ===

    def _deliver(self) -> None:
        app = self.app
        if app is None or self._read_paused or self._read_closed:
            return
        read_into = self._read_into
        while True:
            buf = app.get_buffer(-1)
            size = len(buf)
            got = 0
            eof = False
            try:
                while got < size:
                    n = read_into(size - got, buf[got:] if got else buf)
                    if not n:
                        eof = True
                        break
                    got += n
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                eof = True
            except ssl.SSLError as exc:
                log.debug("TLS read failed: %s", exc)
                if self.raw is not None:
                    self.raw.abort()
                return
            if got:
                app.buffer_updated(got)
            if eof:
                self._read_closed = True
                if self.app is not None:
                    app.eof_received()
                break
            if got < size or self._read_paused or self.app is None:
                break
        if self._eof_wanted and not self._write_closed:
            self._shutdown()
        if self._outgoing.pending:
            self._flush()
        if self._raw_eof:
            self._check_truncation()

    def _flush(self) -> None:
        if self._outgoing.pending and self.raw is not None and not self.raw.is_closing():
            self.raw.write(self._outgoing.read())

    def _shutdown(self) -> None:
        # unwrap() reads as well as writes; it must not meet unread application data in the
        # BIO (OpenSSL would drop it as "application data after close notify"), so it waits
        # until what arrived has been delivered.
        if self._incoming.pending or self._obj.pending():
            return
        try:
            self._obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            log.debug("TLS shutdown failed: %s", exc)
        self._write_closed = True
        self._flush()
        raw = self.raw
        if raw is not None and not raw.is_closing() and raw.can_write_eof():
            raw.write_eof()

    # === transport API for the relay end ===

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._write_closed or self._eof_wanted or self._closed:
            return
        raw = self.raw
        if raw is None or raw.is_closing():
            # Going away (the peer reset, or we closed): nothing written now can arrive, and
            # encrypting it anyway would pile ciphertext up in the BIO until connection_lost.
            return
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            log.debug("TLS write failed: %s", exc)
            if self.raw is not None:
                self.raw.abort()
            return
        self._flush()

    def write_eof(self) -> None:
        if self._eof_wanted:
            return
        self._eof_wanted = True
        if not self._closed:
            self._shutdown()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size() if self.raw is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.raw is not None:
            self.raw.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        if not self._read_paused:
            self._read_paused = True
            if self.raw is not None and not self._closed:
                self.raw.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            if self.raw is not None and not self._closed:
                self.raw.resume_reading()
                self._deliver()

    def is_reading(self) -> bool:
        return not self._read_paused

    def is_closing(self) -> bool:
        return self._closed or self.raw is None or self.raw.is_closing()

    def close(self) -> None:
        """Send close_notify when possible, flush, then close the TCP connection."""
        if self._closed or self.raw is None:
            return
        if not self._handshaking and not self._write_closed:
            self._eof_wanted = True
            self._shutdown()
        self.raw.close()

    def abort(self) -> None:
        if self.raw is not None:
            self.raw.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peercert":
            return self._obj.getpeercert()
        if name == "ssl_object":
            return self._obj
        return self.raw.get_extra_info(name, default) if self.raw is not None else default


def offered_alpn(data: bytes) -> tuple[bytes, ...] | None:
    """The ALPN protocol names offered by the TLS ClientHello at the start of ``data``.

    ``()`` when the hello offers none; None when ``data`` does not start with a complete
    ClientHello in its first record (not TLS, truncated, or malformed).
    """
    try:
        if len(data) < 9 or data[0] != 0x16:
            return None
        record_end = 5 + int.from_bytes(data[3:5], "big")
        if len(data) < record_end or data[5] != 0x01:
            return None
        body_end = 9 + int.from_bytes(data[6:9], "big")
        if body_end > record_end:
            return None
        pos = 9 + 2 + 32  # client version, random
        pos += 1 + data[pos]  # session id
        pos += 2 + int.from_bytes(data[pos : pos + 2], "big")  # cipher suites
        pos += 1 + data[pos]  # compression methods
        if pos == body_end:
            return ()
        ext_end = pos + 2 + int.from_bytes(data[pos : pos + 2], "big")
        if ext_end > body_end:
            return None
        pos += 2
        while pos + 4 <= ext_end:
            kind = int.from_bytes(data[pos : pos + 2], "big")
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            pos += 4
            if pos + length > ext_end:
                return None
            if kind == 16:  # application_layer_protocol_negotiation
                end = pos + 2 + int.from_bytes(data[pos : pos + 2], "big")
                if end > pos + length:
                    return None
                names: list[bytes] = []
                pos += 2
                while pos < end:
                    size = data[pos]
                    if size == 0 or pos + 1 + size > end:
                        return None
                    names.append(bytes(data[pos + 1 : pos + 1 + size]))
                    pos += 1 + size
                return tuple(names)
            pos += length
        return ()
    except IndexError:
        return None
