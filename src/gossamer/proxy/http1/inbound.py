"""Inbound direction: requests from other sidecars to the local app.

Accept → detect → TLS terminate → forward. The listener accepts raw sockets and peeks at the
first bytes without consuming them: a TLS ClientHello is handed to the TLS server (which
requires and verifies a client certificate from the mesh CA); plaintext is refused while mTLS
is STRICT, with a 400 naming the cause when it looks like HTTP, and accepted (with no peer
identity) while it is PERMISSIVE. The caller's SPIFFE ID is
passed to the app in ``x-gossamer-peer-identity``; any such header from outside is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from gossamer.protocol.http1 import HeadScan, ProxyError, error_response
from gossamer.proxy.h2 import H2_PREFACE, INBOUND_ALPN, hand_over_inbound, plain_inbound
from gossamer.proxy.http1.downstream import DownstreamConnection
from gossamer.proxy.http1.exchange import Exchange
from gossamer.proxy.loop_calls import remove_reader
from gossamer.proxy.observe.metrics import RouteStats
from gossamer.proxy.pipeline import inbound, retries
from gossamer.proxy.process.settings import Address
from gossamer.proxy.state import ProxyState
from gossamer.proxy.tasks import spawn
from gossamer.proxy.tcp.proxy import TcpProxy

if TYPE_CHECKING:
    from gossamer.identity.credentials import TlsContexts

__all__ = ["InboundConnection", "InboundListener"]

log = logging.getLogger("gossamer.proxy")

PEER_HEADER = b"x-gossamer-peer-identity"
HANDSHAKE_TIMEOUT = 10.0
DETECT_TIMEOUT = 10.0
_HTTP_METHODS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"PATC", b"OPTI", b"CONN", b"TRAC")


class InboundConnection(DownstreamConnection):
    direction = "inbound"
    drop_headers: ClassVar[frozenset[bytes]] = frozenset({PEER_HEADER})

    def __init__(self, proxy: ProxyState) -> None:
        super().__init__(proxy)
        self.peer = b""
        self.peer_line = b""  # the identity header line and the end of the head
        self.stats: RouteStats | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if hand_over_inbound(self.proxy, transport):  # TLS ALPN "h2": the HTTP/2 path
            self.drop_parsers()
            return
        super().connection_made(transport)
        peercert = transport.get_extra_info("peercert")
        peer, self.stats = inbound.caller(self.proxy, peercert)
        self.peer_serial = inbound.refuse_revoked(self.proxy, peercert, transport)
        self.peer = peer.encode()
        self.peer_line = b"\r\n%b: %b\r\n\r\n" % (PEER_HEADER, self.peer)

    def request_head(self, ex: Exchange, scan: HeadScan) -> bytes:
        if self.peer:
            scan.kept.append((PEER_HEADER, self.peer))
        ex.authority = scan.host or b""
        self.keep_head(ex, ex.target, scan)
        return self.render_head(ex)

    def plain_head(
        self, ex: Exchange, head: bytes, host: bytes | None, request_id: bytes | None
    ) -> bytes:
        ex.path = ex.target
        ex.authority = host or b""
        if request_id is None:
            request_id = self.proxy.new_request_id()
            head += b"\r\nx-request-id: " + request_id
        ex.request_id = request_id
        table = self.proxy.table
        if table is not None and table.inbound_stages is not None:
            # The slots may read and edit the headers: keep the lines, render after them.
            lines = head[head.find(b"\r\n") :]
            ex.plain = lines + self.peer_line[:-4] if self.peer else lines
            return b""
        if self.peer:
            return head + self.peer_line
        return head + b"\r\n\r\n"

    def dispatch(self, ex: Exchange) -> None:
        ex.stats = self.stats
        ex.peer = self.peer
        table = self.proxy.table
        if not inbound.admit(ex, table):
            return  # answered by a stage or the rate limit
        if table is not None and table.inbound_stages is not None:
            ex.head = self.render_head(ex)  # the stages may have edited the request
        key = self.proxy.app_key
        if key is None:
            self.respond_error(ex, 503, "no-local-app", "this sidecar has no local application")
            return
        upstream = self.proxy.app_pool.take(key)
        if upstream is not None:
            upstream.send(ex, self)
        else:
            spawn(self._connect(ex, key), name="connect app")

    def upstream_failed(self, ex: Exchange, cause: str, detail: str, *, reused: bool) -> None:
        """The app closed the connection before answering: once, a reused connection's or a
        safe request's goes to the app again (``retries.may_resend_to_app``)."""
        if not self.closed and retries.may_resend_to_app(ex, reused=reused, has_body=ex.has_body):
            ex.body = None
            self.retry(ex)
            return
        super().upstream_failed(ex, cause, detail, reused=False)

    def retry(self, ex: Exchange) -> None:
        key = self.proxy.app_key
        assert key is not None
        spawn(self._connect(ex, key), name="reconnect app")

    async def _connect(self, ex: Exchange, key: tuple[str, int]) -> None:
        try:
            upstream = await self.proxy.app_pool.connect(key)
        except ProxyError as exc:
            # No app saw the request: the caller's sidecar may take it elsewhere (retries.py).
            cause = "app-unreachable" if exc.cause == "connect-failed" else exc.cause
            self.respond_error(ex, exc.status, cause, f"local app {exc.detail}")
            return
        self.attach(ex, upstream)


class InboundListener:
    """Accepts inbound connections, detects TLS vs plaintext, and terminates mTLS."""

    def __init__(self, proxy: ProxyState, address: Address, credentials: TlsContexts) -> None:
        self.proxy = proxy
        self.address = address
        self.credentials = credentials  # its server context is read per handshake
        credentials.offer_alpn(INBOUND_ALPN)  # dispatched on after the handshake
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, tuple[socket.socket, asyncio.TimerHandle]] = {}
        self.tcp: TcpProxy | None = None  # set by main: takes gossamer-tcp connections
        self._handshaking = 0  # TLS handshakes in flight
        self._max_pending = proxy.settings.listen.max_pending_handshakes

    def start(self) -> Address:
        loop = asyncio.get_running_loop()
        self._loop = loop
        family = socket.AF_INET6 if ":" in self.address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.proxy.settings.listen.workers > 1:  # sibling workers bind the same port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.address.host, self.address.port))
        sock.listen(1024)
        sock.setblocking(False)
        self._sock = sock
        loop.add_reader(sock.fileno(), self._on_accept)
        host, port = sock.getsockname()[:2]
        return Address(host, port)

    def close(self) -> None:
        if self._sock is not None and self._loop is not None:
            remove_reader(self._loop, self._sock.fileno())
            self._sock.close()
            self._sock = None
        for fd, (conn, timer) in list(self._pending.items()):
            timer.cancel()
            if self._loop is not None:
                remove_reader(self._loop, fd)
            conn.close()
        self._pending.clear()

    def _on_accept(self) -> None:
        sock = self._sock
        loop = self._loop
        if sock is None or loop is None:
            return
        for _ in range(64):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("inbound accept failed: %s", exc)
                return
            if len(self._pending) + self._handshaking >= self._max_pending:
                # Silent or slow connections may not pile up without bound: close at once.
                self.proxy.metrics.error("inbound", "handshake-overflow")
                conn.close()
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fd = conn.fileno()
            timer = loop.call_later(DETECT_TIMEOUT, self._give_up, fd)
            self._pending[fd] = (conn, timer)
            loop.add_reader(fd, self._on_first_bytes, fd)

    def _give_up(self, fd: int) -> None:
        entry = self._pending.pop(fd, None)
        if entry is not None and self._loop is not None:
            remove_reader(self._loop, fd)
            entry[0].close()

    def _on_first_bytes(self, fd: int) -> None:
        entry = self._pending.get(fd)
        loop = self._loop
        if entry is None or loop is None:
            return
        conn, timer = entry
        try:
            head = conn.recv(8, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            head = b""
        del self._pending[fd]
        timer.cancel()
        remove_reader(loop, fd)
        if not head:
            conn.close()
            return
        if head[0] == 0x16:  # TLS handshake record
            # ALPN gossamer-tcp in the ClientHello: the TCP relay runs that TLS itself.
            if self.tcp is not None and self.tcp.claim(conn, self._accept_tls):
                return
            spawn(self._accept_tls(conn), name="inbound tls handshake")
            return
        table = self.proxy.table
        if table is not None and table.plaintext_ok:  # a port takes plaintext (per request)
            h2c = head == H2_PREFACE[: len(head)] and len(head) >= 8  # HTTP/2 prior knowledge
            spawn(self._accept_plain(conn, h2c), name="inbound plaintext")
            return
        if table is None:  # no config yet: whether plaintext is allowed is not known yet
            status, cause, detail = 503, "proxy-not-ready", "no configuration from the mesh yet"
        else:
            status, cause = 400, "mtls-required"
            detail = "this port accepts only mutual TLS from the mesh"
        self.proxy.metrics.error("inbound", cause)
        if head[:4] in _HTTP_METHODS:
            with contextlib.suppress(OSError):
                conn.send(error_response(status, cause, detail, close=True))
        conn.close()

    async def _accept_plain(self, conn: socket.socket, h2c: bool = False) -> None:
        loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.Protocol] = (
            (lambda: plain_inbound(self.proxy)) if h2c else (lambda: InboundConnection(self.proxy))
        )
        try:
            await loop.connect_accepted_socket(factory, conn)
        except OSError:
            conn.close()

    async def _accept_tls(self, conn: socket.socket) -> None:
        self._handshaking += 1
        try:
            await self._handshake(conn)
        finally:
            self._handshaking -= 1

    async def _handshake(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: InboundConnection(self.proxy),
                conn,
                ssl=self.credentials.server_context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.proxy.metrics.tls_handshake_failures += 1
            log.info("inbound TLS handshake failed: %s", exc)
            conn.close()
