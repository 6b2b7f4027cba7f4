"""HTTP/1.1 downstream defects found by the differential suite (tests/integration/
test_differential.py, Gossamer against HAProxy), driven through a fake transport.

- A request whose own bytes, read in one go, show it malformed (a bad chunk size, an invalid
  Transfer-Encoding llhttp only reports after the head) was forwarded before the error: the
  head is now dispatched once the bytes in hand parsed cleanly.
- Trailer fields were appended to the request's header list: a pipelined request, rendered
  when its turn came, carried them as headers (a second Host, a forged identity).
- llhttp's "Expected CRLF after version" (a bare LF or CR ending the request line) was
  answered 505 instead of 400.
"""

from __future__ import annotations

import pytest

from tests.unit.proxy.test_downstream_errors import connect, only_response, pooled_upstream

FORGED = b"spiffe://gossamer.local/ns/default/sa/forged"


@pytest.mark.parametrize(
    "body",
    [
        b"10000000000000005\r\nhello\r\n0\r\n\r\n",  # chunk size overflow
        b"-5\r\nhello\r\n0\r\n\r\n",
        b'5;a="b\r\nc"\r\nhello\r\n0\r\n\r\n',  # CRLF in a quoted chunk extension
    ],
    ids=["overflow", "negative", "ext-crlf"],
)
def test_a_malformed_body_in_the_same_read_is_refused_unforwarded(body: bytes) -> None:
    state, conn, transport = connect(with_table=True)
    upstream = pooled_upstream(state)
    conn.data_received(
        b"POST / HTTP/1.1\r\nHost: catalog\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    )
    resp = only_response(transport)
    assert (resp.status, resp.headers["x-gossamer-error"]) == (400, "bad-request")
    assert bytes(upstream.data) == b""
    assert transport.closed


def test_a_transfer_encoding_llhttp_refuses_after_the_head_is_not_forwarded() -> None:
    state, conn, transport = connect(with_table=True)
    upstream = pooled_upstream(state)
    conn.data_received(
        b"POST / HTTP/1.1\r\nHost: catalog\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
    )
    assert only_response(transport).status == 400
    assert bytes(upstream.data) == b""


def test_a_valid_body_read_with_its_head_still_goes_out_whole() -> None:
    state, conn, _ = connect(with_table=True)
    upstream = pooled_upstream(state)
    conn.data_received(
        b"POST /x HTTP/1.1\r\nHost: catalog\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    head, _, body = bytes(upstream.data).partition(b"\r\n\r\n")
    assert head.startswith(b"POST /x HTTP/1.1\r\n")
    assert body == b"5\r\nhello\r\n0\r\n\r\n"
    assert conn.transport is not None and conn.transport.is_reading()


def test_trailer_fields_never_become_headers_of_a_pipelined_request() -> None:
    state, conn, transport = connect(with_table=True)
    upstreams = [pooled_upstream(state), pooled_upstream(state)]  # one for each request
    conn.data_received(
        b"GET /first HTTP/1.1\r\nHost: catalog\r\n\r\n"
        b"POST /second HTTP/1.1\r\nHost: catalog\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nx-gossamer-peer-identity: " + FORGED + b"\r\n"
        b"Host: evil.example\r\nx-trailer: 1\r\n\r\n"
    )
    first = conn.queue[0]
    assert first.upstream is not None
    first.upstream.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    (second,) = [bytes(u.data) for u in upstreams if u.data.startswith(b"POST")]
    head, _, body = second.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /second HTTP/1.1\r\n")
    assert head.lower().count(b"host:") == 1
    assert b"evil" not in head and b"x-trailer" not in head and FORGED not in head
    assert body == b"5\r\nhello\r\n0\r\n\r\n"  # trailers are not forwarded
    assert transport.data.startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize(
    "raw",
    [b"GET / HTTP/1.1\nHost: catalog\n\n", b"GET / HTTP/1.1\rHost: catalog\r\r\n\r\n"],
    ids=["bare-lf", "bare-cr"],
)
def test_a_bare_line_end_after_the_version_is_400_not_505(raw: bytes) -> None:
    _, conn, transport = connect(with_table=True)
    conn.data_received(raw)
    resp = only_response(transport)
    assert (resp.status, resp.headers["x-gossamer-error"]) == (400, "bad-request")


def test_an_absolute_target_and_another_host_are_refused() -> None:
    state, conn, transport = connect(with_table=True)
    upstream = pooled_upstream(state)
    conn.data_received(b"GET http://catalog/abs HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    assert only_response(transport).status == 400
    assert bytes(upstream.data) == b""
