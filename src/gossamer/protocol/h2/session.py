"""A safe, sans-IO wrapper around one libnghttp2 session: bytes in, events out, bytes to send.

``H2Session`` owns one ``nghttp2_session`` and everything that touches its pointer. The
protocol classes feed it received bytes (``receive`` returns a list of events), submit
requests, responses, body data, trailers and resets, and write what ``data_to_send`` returns.
Nothing here does I/O or awaits.

Safety rules this module keeps (the binding is ABI-mode cffi, so mistakes are memory errors):

- C calls back into Python through module-level callbacks that receive a handle to a small
  token, never to the session itself. ``close`` clears the token first, so a callback that
  somehow ran after it would fail cleanly instead of touching a freed session; the session is
  deleted only when no C call of it is on the stack (a close requested from inside a callback
  is carried out when that call returns), and the pointer is owned by ``ffi.gc`` so it is freed
  exactly once even if ``close`` is never called.
- Every buffer C hands to a callback (header names and values, DATA payloads, the output of
  ``mem_send``) is copied into ``bytes`` before the callback returns. A header block handed to
  C is one object owning its names and values (``header_arrays.nv_array``), passed in the
  call itself, so it lives until nghttp2 has copied them.
- Events are collected during ``mem_recv`` and returned afterwards, so the application never
  runs inside an nghttp2 call. An API call made while the session is inside a C call (which the
  proxy never does, but a bug might) is deferred until that call returns.
- An exception in a callback fails the C call (``NGHTTP2_ERR_CALLBACK_FAILURE``), which ends
  the connection; it is logged, never lost.

Flow control is manual (``no_auto_window_update``): received DATA is credited back to the peer
only when the application calls ``consume``, which the proxy does as the data leaves through
the next hop. That is the backpressure between the two sides of a proxied stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from gossamer.protocol.h2 import binding
from gossamer.protocol.h2.binding import backend, ffi, lib
from gossamer.protocol.h2.header_arrays import Header, nv_array

_native: Any = binding.native  # None when the collector is not built (see binding)

__all__ = [
    "CLOSED",
    "DATA",
    "END",
    "GOAWAY",
    "HEADERS",
    "Event",
    "H2Error",
    "H2Session",
    "Header",
    "Outgoing",
]

log = logging.getLogger("gossamer.proxy.h2")

# (kind, stream id, a, b):
#   HEADERS: a = list of (name, value), b = END_STREAM was set
#   DATA:    a = payload bytes
#   END:     END_STREAM on a DATA frame
#   CLOSED:  a = HTTP/2 error code (0 when the stream ended normally), b = the stream's
#            ``Outgoing`` (unsent body and counters) or None
#   GOAWAY:  stream id = last stream id the peer will process, a = error code
Event = tuple[int, int, Any, Any]

HEADERS = 1
DATA = 2
END = 3
CLOSED = 4
GOAWAY = 5

REFUSED_STREAM = 7
MAX_HEADER_LIST_BYTES = 64 * 1024


class H2Error(Exception):
    """nghttp2 refused an operation or hit a fatal error; ``code`` is its error number."""

    def __init__(self, code: int, what: str) -> None:
        reason = ffi.string(lib.nghttp2_strerror(code)).decode("ascii", "replace")
        super().__init__(f"{what}: {reason} ({code})")
        self.code = code


class Outgoing:
    """Body bytes queued for one stream we send on, and how its end looks (trailers or not)."""

    __slots__ = ("buf", "deferred", "ended", "on_sent", "sent", "trailers")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.ended = False
        self.trailers: list[Header] | None = None
        self.deferred = False  # the read callback said "no data yet": resume when some comes
        self.sent = 0
        self.on_sent: Callable[[int], None] | None = None  # told how many bytes left


class _Token:
    """What C holds (through a handle): the way back to a session, cleared on close."""

    __slots__ = ("session",)

    def __init__(self, session: H2Session) -> None:
        self.session: H2Session | None = session


# --------------------------------------------------------------------------- callbacks

# The hot path calls cffi's C backend directly (``ffi.unpack`` and friends are thin Python
# wrappers around these same functions, with a type lookup per call).
_from_handle = backend.from_handle
_unpack = backend.unpack
_cast = backend.cast
_memmove = ffi.memmove
_CHAR_P = ffi.typeof("char *")


def _on_error(exc_type: Any, exc: Any, tb: Any) -> None:
    log.error("exception in an nghttp2 callback", exc_info=(exc_type, exc, tb))


def _on_begin_headers(session: Any, frame: Any, user_data: Any) -> int:
    s: H2Session | None = _from_handle(user_data).session
    if s is None:
        return binding.ERR_CALLBACK_FAILURE
    s._hdrs = []
    s._hdr_bytes = 0
    return 0


def _on_header(
    session: Any, frame: Any, name: Any, namelen: int, value: Any, valuelen: int, flags: int,
    user_data: Any,
) -> int:
    s: H2Session | None = _from_handle(user_data).session
    if s is None:
        return binding.ERR_CALLBACK_FAILURE
    s._hdr_bytes += namelen + valuelen + 32
    if s._hdr_bytes > MAX_HEADER_LIST_BYTES:
        return binding.ERR_TEMPORAL_CALLBACK_FAILURE  # nghttp2 resets this stream
    s._hdrs.append((_unpack(name, namelen), _unpack(value, valuelen)))
    return 0


def _on_frame_recv(session: Any, frame: Any, user_data: Any) -> int:
    s: H2Session | None = _from_handle(user_data).session
    if s is None:
        return binding.ERR_CALLBACK_FAILURE
    hd = frame.hd
    kind = hd.type
    if kind == binding.FRAME_DATA:
        if hd.flags & binding.FLAG_END_STREAM:
            s._events.append((END, hd.stream_id, None, None))
    elif kind == binding.FRAME_HEADERS:
        ctx = s._ctx
        if ctx is None:
            hdrs = s._hdrs
            s._hdrs = []
        else:  # the native collector gathered the block: "name\0value\0..."
            size = s._block_len
            block = _native.gossamer_h2_headers(ctx, size)
            if size[0]:
                parts = _unpack(block, size[0]).split(b"\0")
                hdrs = list(zip(parts[0:-1:2], parts[1::2], strict=True))
            else:
                hdrs = []
        s._events.append((HEADERS, hd.stream_id, hdrs, bool(hd.flags & binding.FLAG_END_STREAM)))
    elif kind == binding.FRAME_GOAWAY:
        goaway = frame.goaway
        s._events.append((GOAWAY, goaway.last_stream_id, goaway.error_code, None))
    return 0


def _on_data_chunk(
    session: Any, flags: int, stream_id: int, data: Any, length: int, user_data: Any
) -> int:
    s: H2Session | None = _from_handle(user_data).session
    if s is None:
        return binding.ERR_CALLBACK_FAILURE
    s._events.append((DATA, stream_id, _unpack(data, length), None))
    return 0


def _on_stream_close(session: Any, stream_id: int, error_code: int, user_data: Any) -> int:
    s: H2Session | None = _from_handle(user_data).session
    if s is None:
        return binding.ERR_CALLBACK_FAILURE
    s._events.append((CLOSED, stream_id, error_code, s._out.pop(stream_id, None)))
    return 0


def _read_body(
    session: Any, stream_id: int, buf: Any, length: int, data_flags: Any, source: Any,
    user_data: Any,
) -> int:
    s: H2Session | None = _from_handle(user_data).session
    if s is None:
        return binding.ERR_CALLBACK_FAILURE
    out = s._out.get(stream_id)
    if out is None:
        return binding.ERR_TEMPORAL_CALLBACK_FAILURE  # nghttp2 resets this stream
    data = out.buf
    n = len(data)
    if n:
        if n > length:
            n = length
        _memmove(buf, data, n)
        del data[:n]
        out.sent += n
        if out.on_sent is not None:
            out.on_sent(n)
    if not data:
        if out.ended:
            del s._out[stream_id]  # nghttp2 asks no more after EOF
            if out.trailers is not None:
                data_flags[0] = binding.DATA_FLAG_EOF | binding.DATA_FLAG_NO_END_STREAM
                rv = lib.nghttp2_submit_trailer(
                    session, stream_id, nv_array(out.trailers), len(out.trailers)
                )
                if rv != 0:
                    return binding.ERR_TEMPORAL_CALLBACK_FAILURE
            else:
                data_flags[0] = binding.DATA_FLAG_EOF
        elif n == 0:
            out.deferred = True
            return binding.ERR_DEFERRED
    return n


def _callback(ctype: str, fn: Callable[..., int]) -> Any:
    return ffi.callback(ctype, fn, error=binding.ERR_CALLBACK_FAILURE, onerror=_on_error)


# C function pointers to the callbacks above; module globals, so they live as long as C may
# call them (the process).
_C_BEGIN_HEADERS = _callback("nghttp2_on_begin_headers_callback", _on_begin_headers)
_C_HEADER = _callback("nghttp2_on_header_callback", _on_header)
_C_FRAME_RECV = _callback("nghttp2_on_frame_recv_callback", _on_frame_recv)
_C_DATA_CHUNK = _callback("nghttp2_on_data_chunk_recv_callback", _on_data_chunk)
_C_STREAM_CLOSE = _callback("nghttp2_on_stream_close_callback", _on_stream_close)
_C_READ_BODY = _callback("nghttp2_data_source_read_callback", _read_body)


def _make_callbacks() -> Any:
    """The callbacks of every session: the Python ones, or with the native collector, its C
    functions (per-field ones, and trampolines that call the Python ones)."""
    pp = ffi.new("nghttp2_session_callbacks **")
    if lib.nghttp2_session_callbacks_new(pp) != 0:
        raise MemoryError("nghttp2_session_callbacks_new failed")
    cbs = ffi.gc(pp[0], lib.nghttp2_session_callbacks_del)
    if _native is None:
        handlers = (_C_BEGIN_HEADERS, _C_HEADER, _C_FRAME_RECV, _C_DATA_CHUNK, _C_STREAM_CLOSE)
    else:
        _native.gossamer_h2_set_python(
            _C_FRAME_RECV, _C_DATA_CHUNK, _C_STREAM_CLOSE, _C_READ_BODY,
            lib.nghttp2_session_mem_send,
        )
        handlers = (
            _native.gossamer_h2_on_begin_headers, _native.gossamer_h2_on_header,
            _native.gossamer_h2_on_frame_recv, _native.gossamer_h2_on_data_chunk,
            _native.gossamer_h2_on_stream_close,
        )  # fmt: skip
    begin_headers, header, frame_recv, data_chunk, stream_close = handlers
    lib.nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, begin_headers)
    lib.nghttp2_session_callbacks_set_on_header_callback(cbs, header)
    lib.nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, frame_recv)
    lib.nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, data_chunk)
    lib.nghttp2_session_callbacks_set_on_stream_close_callback(cbs, stream_close)
    return cbs


def _make_option() -> Any:
    pp = ffi.new("nghttp2_option **")
    if lib.nghttp2_option_new(pp) != 0:
        raise MemoryError("nghttp2_option_new failed")
    opt = ffi.gc(pp[0], lib.nghttp2_option_del)
    lib.nghttp2_option_set_no_auto_window_update(opt, 1)
    lib.nghttp2_option_set_max_send_header_block_length(opt, MAX_HEADER_LIST_BYTES + 1024)
    lib.nghttp2_option_set_max_outbound_ack(opt, 1000)  # PING/SETTINGS flood guard
    lib.nghttp2_option_set_max_settings(opt, 32)
    # Until the peer's SETTINGS arrive, assume a modest stream limit.
    lib.nghttp2_option_set_peer_max_concurrent_streams(opt, 100)
    return opt


_CALLBACKS = _make_callbacks()
_OPTION = _make_option()
_PROVIDER = ffi.new("nghttp2_data_provider *")
_PROVIDER.read_callback = _C_READ_BODY if _native is None else _native.gossamer_h2_read_body


# --------------------------------------------------------------------------- the session


class H2Session:
    """One HTTP/2 connection's protocol state (client or server side)."""

    def __init__(
        self,
        *,
        client: bool,
        settings: Sequence[tuple[int, int]] = (),
        connection_window: int | None = None,
    ) -> None:
        self.client = client
        self._token = _Token(self)
        self._handle = ffi.new_handle(self._token)
        self._events: list[Event] = []
        self._hdrs: list[Header] = []
        self._hdr_bytes = 0
        self._out: dict[int, Outgoing] = {}
        self._busy = False
        self._deferred: list[Callable[[], object]] = []
        self._delete_pending = False
        self._send_ptr = ffi.new("const uint8_t **")
        # With the native collector, nghttp2's user data is its per-session context (which
        # hands ``_handle`` to the Python callbacks); otherwise the handle itself.
        self._ctx: Any = None
        self._block_len = ffi.new("size_t *")  # out-parameter of gossamer_h2_headers
        self._send_out = ffi.new("const char **")  # and of gossamer_h2_send
        user_data = self._handle
        if _native is not None:
            ctx = _native.gossamer_h2_ctx_new(self._handle, MAX_HEADER_LIST_BYTES)
            if ctx == ffi.NULL:
                raise MemoryError("gossamer_h2_ctx_new failed")
            self._ctx = user_data = ffi.gc(ctx, _native.gossamer_h2_ctx_free)
        pp = ffi.new("nghttp2_session **")
        new = lib.nghttp2_session_client_new2 if client else lib.nghttp2_session_server_new2
        rv = new(pp, _CALLBACKS, user_data, _OPTION)
        if rv != 0:
            raise H2Error(rv, "cannot create an HTTP/2 session")
        self._ptr: Any = ffi.gc(pp[0], lib.nghttp2_session_del)
        iv = ffi.new("nghttp2_settings_entry[]", max(len(settings), 1))
        for i, (ident, value) in enumerate(settings):
            iv[i].settings_id = ident
            iv[i].value = value
        self._check(lib.nghttp2_submit_settings(self._ptr, 0, iv, len(settings)), "settings")
        if connection_window is not None:
            self._check(
                lib.nghttp2_session_set_local_window_size(self._ptr, 0, 0, connection_window),
                "connection window",
            )

    # === lifecycle ===

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def close(self) -> None:
        """Free the C session (now, or when the C call on the stack returns). Idempotent."""
        self._token.session = None
        if self._busy:
            self._delete_pending = True
            return
        ptr = self._ptr
        if ptr is not None:
            self._ptr = None
            ffi.release(ptr)  # runs nghttp2_session_del exactly once
            if self._ctx is not None:
                ffi.release(self._ctx)  # no callback can come now: free the collector's buffers
                self._ctx = None
        self._out.clear()
        self._events = []
        self._deferred.clear()

    def _enter(self) -> Any:
        ptr = self._ptr
        if ptr is None or self._delete_pending:
            raise H2Error(binding.ERR_CALLBACK_FAILURE, "session is closed")
        return ptr

    def _leave(self) -> None:
        self._busy = False
        if self._delete_pending:
            self.close()
            return
        if self._deferred:
            pending, self._deferred = self._deferred, []
            for op in pending:
                if self._ptr is None:
                    break
                op()

    def _check(self, rv: int, what: str) -> int:
        if rv < 0:
            raise H2Error(rv, what)
        return rv

    # === bytes in and out ===

    def receive(self, data: bytes) -> list[Event]:
        """Feed received bytes; return the events they completed. Raises ``H2Error`` when
        the connection cannot go on (bad preface, flood, callback failure)."""
        ptr = self._enter()
        self._busy = True
        try:
            rv = lib.nghttp2_session_mem_recv(ptr, data, len(data))
        finally:
            self._leave()
        events = self._events
        self._events = []
        if rv < 0:
            raise H2Error(rv, "receive")
        return events

    def data_to_send(self) -> bytes:
        """Everything nghttp2 wants to write now (frames, with body data pulled as allowed).

        Sending can complete events too (a stream closes when our END_STREAM or RST_STREAM
        goes out; a request refused after GOAWAY): collect them with ``take_events``."""
        ptr = self._ptr
        if ptr is None or self._busy:
            return b""
        ctx = self._ctx
        if ctx is not None:  # the native collector gathers every frame in one call
            out = self._send_out
            self._busy = True
            try:
                n = _native.gossamer_h2_send(ptr, ctx, out)
                # Copied out before ``_leave``: a close asked for during the call frees the
                # collector's buffer there.
                data = _unpack(out[0], n) if n > 0 else b""
            finally:
                self._leave()
            if n < 0:
                raise H2Error(n, "send")
            return data
        send_ptr = self._send_ptr
        parts: list[bytes] = []
        self._busy = True
        try:
            while True:
                n = lib.nghttp2_session_mem_send(ptr, send_ptr)
                if n <= 0:
                    break
                parts.append(_unpack(_cast(_CHAR_P, send_ptr[0]), n))
        finally:
            self._leave()
        if n < 0:
            raise H2Error(n, "send")
        return b"".join(parts)

    def take_events(self) -> list[Event]:
        """Events completed since the last ``receive`` or ``take_events`` (by sending)."""
        events = self._events
        if events:
            self._events = []
        return events

    def want_read(self) -> bool:
        return self._ptr is not None and bool(lib.nghttp2_session_want_read(self._ptr))

    def want_write(self) -> bool:
        return self._ptr is not None and bool(lib.nghttp2_session_want_write(self._ptr))

    def request_allowed(self) -> bool:
        """A client may open new streams (no GOAWAY received or sent)."""
        return self._ptr is not None and lib.nghttp2_session_check_request_allowed(self._ptr) == 1

    def last_processed_stream_id(self) -> int:
        ptr = self._enter()
        return int(lib.nghttp2_session_get_last_proc_stream_id(ptr))

    # === streams ===

    def submit_request(
        self, headers: Sequence[Header], *, end_stream: bool
    ) -> tuple[int, Outgoing | None]:
        """Open a stream (client); returns its id and, unless ``end_stream``, its body queue."""
        ptr = self._enter()
        if self._busy:
            raise H2Error(binding.ERR_CALLBACK_FAILURE, "submit_request inside a callback")
        nva = nv_array(headers)
        provider = ffi.NULL if end_stream else _PROVIDER
        stream_id = self._check(
            lib.nghttp2_submit_request(ptr, ffi.NULL, nva, len(headers), provider, ffi.NULL),
            "submit request",
        )
        out = None
        if not end_stream:
            out = self._out[stream_id] = Outgoing()
        return stream_id, out

    def submit_response(
        self, stream_id: int, headers: Sequence[Header], *, end_stream: bool
    ) -> Outgoing | None:
        """Answer a stream (server); unless ``end_stream``, returns its body queue."""
        ptr = self._enter()
        if self._busy:
            self._deferred.append(
                lambda: self._submit_response_now(ptr, stream_id, list(headers), end_stream)
            )
            return None if end_stream else self._out.setdefault(stream_id, Outgoing())
        return self._submit_response_now(ptr, stream_id, headers, end_stream)

    def _submit_response_now(
        self, ptr: Any, stream_id: int, headers: Sequence[Header], end_stream: bool
    ) -> Outgoing | None:
        out = None
        if not end_stream:
            out = self._out.get(stream_id)
            if out is None:
                out = self._out[stream_id] = Outgoing()
        rv = lib.nghttp2_submit_response(
            ptr, stream_id, nv_array(headers), len(headers), ffi.NULL if end_stream else _PROVIDER
        )
        if rv < 0:
            self._out.pop(stream_id, None)
            raise H2Error(rv, "submit response")
        return out

    def send_data(self, stream_id: int, data: bytes) -> bool:
        """Queue body bytes on a stream opened with a body (nghttp2 pulls them as allowed);
        False when the stream takes no more (gone, ended, or opened without a body)."""
        out = self._out.get(stream_id)
        if out is None or out.ended:
            return False
        out.buf += data
        if out.deferred:
            self._resume(stream_id, out)
        return True

    def end_stream(self, stream_id: int, trailers: list[Header] | None = None) -> None:
        """No more body on this stream; end it with ``trailers`` (a HEADERS frame) if given."""
        out = self._out.get(stream_id)
        if out is None or out.ended:
            return
        out.ended = True
        out.trailers = trailers or None
        if out.deferred:
            self._resume(stream_id, out)

    def _resume(self, stream_id: int, out: Outgoing) -> None:
        out.deferred = False
        ptr = self._ptr
        if ptr is None:
            return
        if self._busy:
            self._deferred.append(lambda: self._resume_now(stream_id))
        else:
            lib.nghttp2_session_resume_data(ptr, stream_id)

    def _resume_now(self, stream_id: int) -> None:
        if self._ptr is not None:
            lib.nghttp2_session_resume_data(self._ptr, stream_id)

    def reset(self, stream_id: int, error_code: int) -> None:
        """Send RST_STREAM (ignored when the stream is already gone)."""
        ptr = self._ptr
        if ptr is None:
            return
        if self._busy:
            self._deferred.append(lambda: self.reset(stream_id, error_code))
            return
        lib.nghttp2_submit_rst_stream(ptr, 0, stream_id, error_code)

    def consume(self, stream_id: int, size: int) -> None:
        """Credit ``size`` received DATA bytes back to the peer (stream and connection)."""
        ptr = self._ptr
        if ptr is None or size <= 0:
            return
        if self._busy:
            self._deferred.append(lambda: self.consume(stream_id, size))
            return
        lib.nghttp2_session_consume(ptr, stream_id, size)

    def goaway(self, error_code: int = 0, last_stream_id: int | None = None) -> None:
        """Tell the peer to open no more streams (beyond ``last_stream_id``)."""
        ptr = self._ptr
        if ptr is None:
            return
        if self._busy:
            self._deferred.append(lambda: self.goaway(error_code, last_stream_id))
            return
        last = last_stream_id
        if last is None:
            last = lib.nghttp2_session_get_last_proc_stream_id(ptr)
        lib.nghttp2_submit_goaway(ptr, 0, last, error_code, ffi.NULL, 0)

    def terminate(self, error_code: int) -> None:
        """GOAWAY with ``error_code``; the session then wants to write that and stop."""
        ptr = self._ptr
        if ptr is None:
            return
        if self._busy:
            self._deferred.append(lambda: self.terminate(error_code))
            return
        lib.nghttp2_session_terminate_session(ptr, error_code)

    def ping(self) -> None:
        ptr = self._enter()
        if not self._busy:
            lib.nghttp2_submit_ping(ptr, 0, ffi.NULL)
