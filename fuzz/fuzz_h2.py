"""Fuzz target ``h2``: the sans-IO HTTP/2 binding, server side, fed by a hostile client.

Owns ``gossamer.protocol.h2`` (``session.py``: the callbacks, the event list, the body queues,
deferred calls and closing; ``header_arrays.py``; the native header collector
``native/headers.c`` when built) over the system's libnghttp2.

Each input is what a client sends after the connection preface (the target sends the 24-byte
magic and an empty SETTINGS frame first). It is fed one frame at a time (split on the frames'
length fields, so a lying length still splits somewhere) to a server ``H2Session`` with the
proxy's server settings, and a small deterministic application answers as the proxy would:
each request gets a response with a body (sometimes more than the window allows, sometimes
with trailers), received DATA is credited back, some streams are reset, a GOAWAY is answered
with one. After every step, what the session wants to send is taken.

When the native header collector is built, every input runs twice, through sessions with
the native collector and with the Python callbacks, and both must produce the same events and
the same bytes (a differential oracle over the two header paths).

A crash is:

- any exception out of the session other than ``H2Error`` (the documented protocol error,
  after which the connection ends);
- state that is not bounded by the input: more events from one frame than it can complete,
  body queues for streams that were never answered, events or deferred calls left behind
  after a call returns, a session that is busy when no call is on the stack, output larger
  than the body bytes queued plus a bound per input frame;
- after ``close``: a session still holding queues, or (checked every few thousand inputs)
  closed sessions still alive (a reference cycle through C would leak them).
"""

from __future__ import annotations

import gc
import weakref
from types import ModuleType
from typing import Any

from fuzz.engine import FuzzFinding, fuzz, instrumented, load_copy

with instrumented("gossamer.protocol.h2"):
    from gossamer.protocol.h2 import binding
    from gossamer.protocol.h2 import session as native_session
    from gossamer.protocol.h2.session import CLOSED, DATA, END, GOAWAY, HEADERS

__all__ = ["one_input"]

MAGIC = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
# The proxy's server settings (gossamer.proxy.h2.connection, not imported: it needs a loop).
SERVER_SETTINGS = (
    (binding.SETTINGS_MAX_CONCURRENT_STREAMS, 256),
    (binding.SETTINGS_INITIAL_WINDOW_SIZE, 256 * 1024),
    (binding.SETTINGS_MAX_HEADER_LIST_SIZE, 64 * 1024),
)
CONNECTION_WINDOW = 2 * 1024 * 1024
MAX_FRAMES = 512  # per input; beyond, the rest is fed at once
OUTPUT_PER_FRAME = 256  # the most a session writes in answer to one frame, beyond body bytes
OUTPUT_FIXED = 4096
CANCEL = 8


def _python_session_module() -> ModuleType | None:
    """A second copy of ``session.py`` made with the Python callbacks (no native collector);
    None when the collector is not built (then the one module already runs them)."""
    if binding.native is None:
        return None
    saved, binding.native = binding.native, None
    try:
        return load_copy("gossamer.protocol.h2.session", "fuzz_h2_python_session")
    finally:
        binding.native = saved


SESSION_MODULES: list[ModuleType] = [native_session]
_python = _python_session_module()
if _python is not None:
    SESSION_MODULES.append(_python)

LIVE: weakref.WeakSet[Any] = weakref.WeakSet()
RUNS = [0]


def _frames(data: bytes) -> list[bytes]:
    """``data`` cut where its frames' length fields say (the tail as one piece)."""
    pieces: list[bytes] = []
    at = 0
    while at < len(data) and len(pieces) < MAX_FRAMES:
        if len(data) - at < 9:
            break
        length = int.from_bytes(data[at : at + 3], "big")
        end = min(len(data), at + 9 + length)
        pieces.append(data[at:end])
        at = end
    if at < len(data):
        pieces.append(data[at:])
    return pieces


def _event_key(event: tuple[int, int, Any, Any]) -> tuple[object, ...]:
    kind, sid, a, b = event
    if kind == CLOSED:
        b = None if b is None else (bytes(b.buf), b.sent, b.ended, b.trailers)
    return kind, sid, a, b


class App:
    """The server application: answers requests, credits data, resets some streams."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.answered: set[int] = set()
        self.queued = 0  # body bytes handed to the session

    def handle(self, events: list[tuple[int, int, Any, Any]]) -> None:
        session = self.session
        for kind, sid, a, b in events:
            if kind == HEADERS:
                if sid in self.answered:
                    session.end_stream(sid, [(b"grpc-status", b"0")] if sid % 4 == 1 else None)
                    continue
                self.answered.add(sid)
                headers = [(b":status", b"200"), (b"content-type", b"text/plain")]
                if sid % 8 == 7:
                    session.submit_response(sid, [(b":status", b"204")], end_stream=True)
                    continue
                session.submit_response(sid, headers, end_stream=False)
                size = (sid * 7919) % 300_000  # sometimes more than the stream window
                if session.send_data(sid, b"r" * size):
                    self.queued += size
                if b:
                    session.end_stream(sid, [(b"x-trailer", b"t")] if sid % 4 == 1 else None)
            elif kind == DATA:
                session.consume(sid, len(a))
                if len(a) % 7 == 3:
                    session.reset(sid, CANCEL)
            elif kind == END:
                session.end_stream(sid)
            elif kind == GOAWAY:
                session.goaway(0)


def _check_idle(session: Any, app: App, what: str) -> None:
    """Between calls: nothing left behind, queues only for answered streams."""
    if session._busy or session._deferred or session._events:
        raise FuzzFinding(
            f"after {what}: busy={session._busy} deferred={session._deferred} "
            f"events={session._events}"
        )
    stray = set(session._out) - app.answered
    if stray:
        raise FuzzFinding(f"after {what}: body queues for streams never answered: {stray}")


def _serve(module: ModuleType, frames: list[bytes]) -> list[object]:
    """Feed ``frames`` to a fresh server session of ``module``; what happened, comparable."""
    session = module.H2Session(
        client=False, settings=SERVER_SETTINGS, connection_window=CONNECTION_WINDOW
    )
    LIVE.add(session)
    app = App(session)
    trace: list[object] = []
    sent = 0
    try:
        for count, piece in enumerate(frames, 1):
            try:
                events = session.receive(piece)
            except module.H2Error as exc:
                trace.append(("error", exc.code))
                break
            frames_in = max(1, len(piece) // 9)
            if len(events) > 3 * frames_in + 2 * len(app.answered) + 2:
                raise FuzzFinding(f"{len(events)} events from {len(piece)} bytes: {events!r}")
            trace.extend(_event_key(e) for e in events)
            try:
                app.handle(events)
            except module.H2Error as exc:  # e.g. a response on a stream already closed
                trace.append(("app-error", exc.code))
            _check_idle(session, app, "receive")
            try:
                out = session.data_to_send()
            except module.H2Error as exc:
                trace.append(("send-error", exc.code))
                break
            sent += len(out)
            if sent > app.queued + OUTPUT_PER_FRAME * count + OUTPUT_FIXED:
                raise FuzzFinding(
                    f"{sent} bytes out for {count} frames in and {app.queued} body bytes queued"
                )
            trace.append(("out", out))
            trace.extend(_event_key(e) for e in session.take_events())
            _check_idle(session, app, "data_to_send")
            if not session.want_read() and not session.want_write():
                trace.append("done")
                break
    finally:
        session.close()
    if session._out or session._events or not session.closed:
        raise FuzzFinding("a closed session still holds state")
    return trace


def one_input(data: bytes) -> None:
    frames = [MAGIC + EMPTY_SETTINGS, *_frames(data)]
    traces = [_serve(module, frames) for module in SESSION_MODULES]
    if len(traces) == 2 and traces[0] != traces[1]:
        pairs = zip(*traces, strict=False)
        diff = next((i for i, (x, y) in enumerate(pairs) if x != y), min(map(len, traces)))
        raise FuzzFinding(
            f"native collector and Python callbacks differ at step {diff}:\n"
            f"  native {traces[0][diff : diff + 3]!r}\n"
            f"  python {traces[1][diff : diff + 3]!r}"
        )
    RUNS[0] += 1
    if RUNS[0] % 4096 == 0:
        gc.collect()
        if len(LIVE):
            raise FuzzFinding(f"{len(LIVE)} closed sessions are still alive (a leak)")


if __name__ == "__main__":
    fuzz(one_input)
