"""Sans-IO rules of the plain path: which heads are forwarded by slicing, what is cut, and the
lean llhttp frame that validates them."""

from __future__ import annotations

import pytest

from gossamer.protocol.plain import (
    RequestFrame,
    ResponseFrame,
    header_pairs,
    plain_request_head,
    plain_response_head,
)

REQUEST_LINE = b"GET /a?b=1 HTTP/1.1"


def _req(*lines: bytes) -> bytes:
    return b"\r\n".join((REQUEST_LINE, *lines))


class TestPlainRequestHead:
    def test_no_special_header_passes_unchanged(self) -> None:
        head = _req(b"Host: catalog", b"Accept: */*", b"User-Agent: t")
        assert plain_request_head(head, want_host=False) == (head, None, None, None, False, b"t")

    def test_host_and_request_id_are_found_case_insensitively(self) -> None:
        head = _req(b"hOsT:  catalog:8080 ", b"X-Request-ID: abc")
        assert plain_request_head(head, want_host=True) == (
            head, b"catalog:8080", b"abc", None, False, None
        )  # fmt: skip

    def test_host_is_only_looked_for_when_wanted(self) -> None:
        head = _req(b"Host: a")
        assert plain_request_head(head, want_host=False) == (head, None, None, None, False, None)

    @pytest.mark.parametrize("value", [b"keep-alive", b"close", b" Keep-Alive ", b"CLOSE"])
    def test_plain_connection_line_is_cut(self, value: bytes) -> None:
        head = _req(b"Host: a", b"Connection:" + value, b"Accept: */*")
        assert plain_request_head(head, want_host=False) == (
            _req(b"Host: a", b"Accept: */*"), None, None, None, False, None
        )

    def test_connection_as_last_line_is_cut(self) -> None:
        head = _req(b"Host: a", b"Connection: keep-alive")
        found = plain_request_head(head, want_host=True)
        assert found == (_req(b"Host: a"), b"a", None, None, False, None)

    def test_spoofed_peer_identity_is_cut(self) -> None:
        head = _req(b"X-Gossamer-Peer-Identity: spiffe://evil/sa/x", b"Host: a")
        found = plain_request_head(head, want_host=False)
        assert found == (_req(b"Host: a"), None, None, None, False, None)

    @pytest.mark.parametrize(
        "line",
        [
            b"Content-Length: 0",
            b"Transfer-Encoding: chunked",
            b"Upgrade: websocket",
            b"Connection: upgrade",
            b"Connection: keep-alive, x-secret",
            b"Keep-Alive: timeout=5",
            b"Proxy-Connection: keep-alive",
            b"Proxy-Authorization: Basic eA==",
            b"TE: trailers",
            b"Trailer: x-checksum",
        ],
    )
    def test_body_upgrade_and_other_hop_by_hop_take_the_full_path(self, line: bytes) -> None:
        assert plain_request_head(_req(b"Host: a", line), want_host=True) is None

    @pytest.mark.parametrize(
        "lines",
        [
            (b"Host: a", b"Host: b"),
            (b"X-Request-Id: 1", b"x-request-id: 2"),
            (b"Connection: close", b"Connection: keep-alive"),
        ],
    )
    def test_repeated_headers_the_proxy_acts_on_take_the_full_path(
        self, lines: tuple[bytes, ...]
    ) -> None:
        assert plain_request_head(_req(*lines), want_host=True) is None

    def test_names_that_only_start_like_special_ones_are_kept(self) -> None:
        head = _req(b"Host: a", b"Connections: 3", b"Hosting: x", b"Tea: green", b"Upgraded: no")
        assert plain_request_head(head, want_host=True) == (head, b"a", None, None, False, None)


class TestPlainResponseHead:
    STATUS = b"HTTP/1.1 200 OK"

    def test_without_hop_by_hop_unchanged(self) -> None:
        head = b"\r\n".join((self.STATUS, b"Content-Length: 2", b"Server: x"))
        assert plain_response_head(head) == head

    def test_connection_keep_alive_is_cut(self) -> None:
        head = b"\r\n".join((self.STATUS, b"Content-Length: 2", b"Connection: keep-alive",
                             b"ETag: y"))  # fmt: skip
        assert plain_response_head(head) == b"\r\n".join(
            (self.STATUS, b"Content-Length: 2", b"ETag: y")
        )

    @pytest.mark.parametrize(
        "line",
        [
            b"Transfer-Encoding: chunked",
            b"Keep-Alive: timeout=5",
            b"Upgrade: h2c",
            b"Connection: upgrade",
            b"Connection: keep-alive, x-private",
            b"Proxy-Authenticate: Basic",
            b"Trailer: x-sum",
        ],
    )
    def test_other_hop_by_hop_takes_the_full_path(self, line: bytes) -> None:
        assert plain_response_head(b"\r\n".join((self.STATUS, line))) is None

    def test_two_connection_lines_take_the_full_path(self) -> None:
        head = b"\r\n".join((self.STATUS, b"Connection: keep-alive", b"Connection: close"))
        assert plain_response_head(head) is None


class TestMessageFrame:
    def test_one_whole_request_is_accepted(self) -> None:
        frame = RequestFrame()
        assert frame.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert frame.keep_alive
        assert frame.feed(b"GET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert not frame.keep_alive

    @pytest.mark.parametrize(
        "data",
        [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  # two
            b"GET / HTTP/1.1\r\nHost: a\r\n",  # partial
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",  # invalid token
            b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",  # bare LF
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",  # obs-fold
            b"CONNECT / HTTP/1.1\r\n\r\n",  # llhttp raises HttpParserUpgrade, not an error
            b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
        ],
    )
    def test_anything_but_one_valid_message_is_refused_and_the_frame_renewed(
        self, data: bytes
    ) -> None:
        frame = RequestFrame()
        assert not frame.feed(data)
        assert frame.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # a clean parser again

    def test_response_with_its_whole_body(self) -> None:
        frame = ResponseFrame()
        assert frame.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
        assert frame.keep_alive
        assert not frame.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab")  # partial
        assert not frame.feed(b"HTTP/1.1 200 OK\r\n\r\nabc")  # read until close: not whole
        assert frame.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert not frame.keep_alive


def test_header_pairs_strips_values() -> None:
    assert header_pairs(b"\r\nHost:  a \r\nX-Empty:\r\nAccept: */*") == [
        (b"Host", b"a"),
        (b"X-Empty", b""),
        (b"Accept", b"*/*"),
    ]
