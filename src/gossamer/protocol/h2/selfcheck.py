"""A run of the binding against the loaded library before the first connection uses it.

``self_check`` drives two in-memory sessions through a request with body and trailers, a
response, a reset and a GOAWAY, and compares every field read back from C with what was
sent. It runs once when the protocol classes are imported (``connection``), so declarations
that do not match the installed libnghttp2 fail loudly at startup instead of on traffic.
"""

from __future__ import annotations

from gossamer.protocol.h2 import binding
from gossamer.protocol.h2.session import CLOSED, DATA, GOAWAY, HEADERS, Event, H2Session

__all__ = ["self_check"]


def self_check() -> None:
    """Run a request/response, trailers, a reset and a GOAWAY between two in-memory sessions
    and check every field read from C arrived intact; raise ``ImportError`` if not."""

    def pump(a: H2Session, b: H2Session) -> list[Event]:
        return b.receive(a.data_to_send())

    client = H2Session(client=True, settings=[(binding.SETTINGS_ENABLE_PUSH, 0)])
    server = H2Session(client=False, settings=[(binding.SETTINGS_MAX_CONCURRENT_STREAMS, 10)])
    try:
        request = [
            (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"check"),
            (b":path", b"/self-check"), (b"te", b"trailers"),
        ]
        sid, _ = client.submit_request(request, end_stream=False)
        client.send_data(sid, b"hello")
        client.end_stream(sid, [(b"grpc-status", b"0")])
        got = pump(client, server)
        kinds = [(e[0], e[1]) for e in got]
        expect = [(HEADERS, sid), (DATA, sid), (HEADERS, sid)]
        if kinds != expect or got[0][2] != request or got[1][2] != b"hello":
            raise ImportError(f"nghttp2 self check: request events {got!r}")
        if got[2][2] != [(b"grpc-status", b"0")] or got[2][3] is not True:
            raise ImportError(f"nghttp2 self check: trailers {got[2]!r}")
        server.consume(sid, 5)
        server.submit_response(sid, [(b":status", b"200")], end_stream=True)
        got = pump(server, client)
        heads = [e for e in got if e[0] == HEADERS]
        closes = [e for e in got if e[0] == CLOSED]
        if heads != [(HEADERS, sid, [(b":status", b"200")], True)] or closes != [
            (CLOSED, sid, 0, None)
        ]:
            raise ImportError(f"nghttp2 self check: response events {got!r}")
        sid2, _ = client.submit_request(request[:4], end_stream=True)
        pump(client, server)
        client.reset(sid2, 8)
        got = pump(client, server)
        if (CLOSED, sid2, 8, None) not in got:
            raise ImportError(f"nghttp2 self check: reset events {got!r}")
        server.goaway(11, last_stream_id=sid2)
        got = pump(server, client)
        if (GOAWAY, sid2, 11, None) not in got:
            raise ImportError(f"nghttp2 self check: goaway events {got!r}")
    finally:
        client.close()
        server.close()
