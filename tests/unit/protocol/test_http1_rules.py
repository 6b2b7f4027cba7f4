"""Sans-IO HTTP/1.1 rules: header scanning, absolute targets, chunk framing, error responses."""

from __future__ import annotations

import pytest

from gossamer.protocol.http1 import (
    HOP_BY_HOP,
    LAST_CHUNK,
    ProxyError,
    check_request_head,
    encode_chunk,
    error_response,
    parse_error,
    render_headers,
    same_authority,
    scan_headers,
    split_absolute_target,
)


def _parse_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, "response head must end with an empty line"
    lines = head.decode("ascii").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        assert colon, f"malformed header line {line!r}"
        assert name.lower() not in headers, f"duplicate header {name!r}"
        headers[name.lower()] = value.strip()
    return lines[0], headers, body


class TestScanHeaders:
    def test_hop_by_hop_headers_are_removed(self) -> None:
        """Every hop-by-hop header is dropped from the forwardable list, any case."""
        headers = [(name.upper(), b"x") for name in sorted(HOP_BY_HOP)]
        headers.append((b"Accept", b"*/*"))
        scan = scan_headers(headers)
        assert scan.kept == [(b"Accept", b"*/*")]

    def test_fields_named_in_connection_are_removed(self) -> None:
        """Headers listed in Connection (several values, any case) are not forwarded."""
        scan = scan_headers(
            [
                (b"Connection", b"X-Foo, keep-alive"),
                (b"x-foo", b"1"),
                (b"connection", b" x-bar "),
                (b"X-Bar", b"2"),
                (b"X-Baz", b"3"),
            ]
        )
        assert scan.kept == [(b"X-Baz", b"3")]
        assert scan.connection == b"X-Foo, keep-alive, x-bar "

    def test_connection_close_keeps_other_headers(self) -> None:
        """``Connection: close`` names no field, so nothing else is removed."""
        scan = scan_headers([(b"Connection", b"close"), (b"Accept", b"*/*")])
        assert scan.kept == [(b"Accept", b"*/*")]
        assert scan.connection == b"close"

    def test_drop_set_removes_named_headers(self) -> None:
        """Names in the caller's drop set are removed, matched case-insensitively."""
        scan = scan_headers(
            [(b"X-Gossamer-Peer-Identity", b"spiffe://evil"), (b"a", b"1")],
            frozenset({b"x-gossamer-peer-identity"}),
        )
        assert scan.kept == [(b"a", b"1")]

    def test_host_content_length_and_request_id_are_captured_and_kept(self) -> None:
        """Host, Content-Length and x-request-id are captured and still forwarded."""
        headers = [(b"HOST", b"catalog:80"), (b"Content-Length", b"12"), (b"X-Request-Id", b"r1")]
        scan = scan_headers(headers)
        assert (scan.host, scan.content_length, scan.request_id) == (b"catalog:80", b"12", b"r1")
        assert scan.kept == headers
        assert scan.chunked is False

    def test_absent_values_are_none(self) -> None:
        """Without Host, Content-Length, x-request-id or Connection, those fields are None."""
        scan = scan_headers([(b"accept", b"*/*")])
        assert (scan.host, scan.content_length, scan.request_id, scan.connection) == (
            None,
            None,
            None,
            None,
        )

    @pytest.mark.parametrize(
        ("value", "chunked"),
        [
            (b"chunked", True),
            (b"Chunked", True),
            (b"gzip, chunked", True),
            (b"gzip,chunked ", True),
            (b"chunked, gzip", False),
            (b"gzip", False),
        ],
    )
    def test_chunked_is_the_final_transfer_coding(self, value: bytes, chunked: bool) -> None:
        """The body is chunked only when chunked is the last transfer coding."""
        scan = scan_headers([(b"Transfer-Encoding", value)])
        assert scan.chunked is chunked
        assert scan.kept == []


class TestCheckRequestHead:
    """Request heads two parsers could frame or route differently are refused before any of
    them is forwarded (found by tests/integration/test_differential.py against HAProxy)."""

    @staticmethod
    def refused(headers: list[tuple[bytes, bytes]], target: bytes = b"/",
                http10: bool = False) -> str | None:  # fmt: skip
        try:
            check_request_head(scan_headers(headers), target, http10)
        except ProxyError as exc:
            assert (exc.status, exc.cause) == (400, "bad-request")
            return exc.detail
        return None

    @pytest.mark.parametrize(
        "lines",
        [
            [b"chunked"],
            [b"Chunked"],
            [b" chunked\t"],
        ],
    )
    def test_chunked_alone_is_accepted(self, lines: list[bytes]) -> None:
        assert self.refused([(b"Transfer-Encoding", v) for v in lines]) is None

    @pytest.mark.parametrize(
        "lines",
        [
            [b"chunked, identity"],
            [b"identity, chunked"],
            [b"identity", b"chunked"],  # two lines are one list: identity, chunked
            [b"gzip, chunked"],
            [b", chunked"],
            [b"chunked,"],
            [b"chunked", b"chunked"],
            [b"xchunked"],
        ],
    )
    def test_any_other_transfer_encoding_is_refused(self, lines: list[bytes]) -> None:
        detail = self.refused([(b"Transfer-Encoding", v) for v in lines])
        assert detail == "a Transfer-Encoding other than chunked"

    def test_transfer_encoding_lines_are_joined(self) -> None:
        scan = scan_headers([(b"Transfer-Encoding", b"gzip"), (b"transfer-encoding", b"chunked")])
        assert scan.transfer_encoding == b"gzip, chunked"
        assert scan.chunked

    def test_transfer_encoding_in_http10_and_two_hosts_are_refused(self) -> None:
        assert self.refused([(b"Transfer-Encoding", b"chunked")], http10=True) == (
            "Transfer-Encoding in an HTTP/1.0 request"
        )
        assert self.refused([(b"Host", b"a"), (b"host", b"a")]) == "more than one Host header"

    @pytest.mark.parametrize(
        ("target", "host"),
        [
            (b"http://catalog/abs", b"catalog"),
            (b"http://Catalog/abs", b"catalog:80"),
            (b"http://catalog:80/abs", b"CATALOG"),
            (b"https://catalog/x", b"catalog:443"),
            (b"http://user@catalog?q=1", b"catalog"),
        ],
    )
    def test_absolute_form_with_its_own_host_is_accepted(self, target: bytes, host: bytes) -> None:
        assert self.refused([(b"Host", host)], target) is None

    @pytest.mark.parametrize(
        ("target", "host"),
        [
            (b"http://catalog/abs", b"evil.example"),
            (b"http://catalog:8080/", b"catalog"),
            (b"HTTP://catalog/", b"payments"),
            (b"https://catalog/x", b"catalog:80"),
            (b"http://evil@catalog/", b"evil"),
        ],
    )
    def test_absolute_form_with_another_host_is_refused(self, target: bytes, host: bytes) -> None:
        assert self.refused([(b"Host", host)], target) == (
            "Host differs from the authority of the request target"
        )

    def test_absolute_form_without_host_and_origin_form_are_left_alone(self) -> None:
        assert self.refused([], b"http://catalog/abs") is None
        assert self.refused([(b"Host", b"anything")], b"/path") is None
        assert same_authority(b"a:80", b"A") and not same_authority(b"a:81", b"a")


class TestParseError:
    @pytest.mark.parametrize(
        "detail",
        [
            "Expected CRLF after version",  # a bare LF or CR ends the request line
            "Invalid major version",
            "Invalid minor version",
            "Expected dot",
            "Invalid header value char",
        ],
    )
    def test_malformed_requests_are_400(self, detail: str) -> None:
        error = parse_error(detail)
        assert (error.status, error.cause, error.detail) == (400, "bad-request", detail)

    def test_an_unknown_but_well_formed_version_is_505(self) -> None:
        error = parse_error("Invalid HTTP version")
        assert (error.status, error.cause) == (505, "http-version-not-supported")


class TestSplitAbsoluteTarget:
    @pytest.mark.parametrize(
        ("target", "expected"),
        [
            (b"http://catalog/items?id=1", (b"catalog", b"/items?id=1")),
            (b"http://catalog:8080/", (b"catalog:8080", b"/")),
            (b"http://catalog", (b"catalog", b"/")),
            (b"http://catalog:8080", (b"catalog:8080", b"/")),
            (b"http://catalog?q=1", (b"catalog", b"/?q=1")),
            (b"http://user:pw@catalog:8080/x", (b"catalog:8080", b"/x")),
            (b"http://[::1]:8080/x", (b"[::1]:8080", b"/x")),
        ],
    )
    def test_absolute_form_becomes_authority_and_origin_form(
        self, target: bytes, expected: tuple[bytes, bytes]
    ) -> None:
        """``http://host[:port]/path?q`` splits into authority and origin-form target."""
        assert split_absolute_target(target) == expected

    @pytest.mark.parametrize("target", [b"/", b"/items?id=1", b"*"])
    def test_origin_form_passes_through(self, target: bytes) -> None:
        """Origin-form (and asterisk-form) targets come back unchanged with no authority."""
        assert split_absolute_target(target) == (None, target)

    @pytest.mark.parametrize(
        ("target", "expected"),
        [
            (b"http://user:pw@catalog:8080", (b"catalog:8080", b"/")),
            (b"http://user@catalog?q=1", (b"catalog", b"/?q=1")),
        ],
    )
    def test_userinfo_is_stripped_without_a_path(
        self, target: bytes, expected: tuple[bytes, bytes]
    ) -> None:
        """Userinfo is dropped from the authority even when no path follows it."""
        # BUG (found by this test): the no-slash branch returns ``user:pw@catalog:8080``; the
        # outbound proxy then forwards it as Host and routes it by its text before ':' ("user").
        assert split_absolute_target(target) == expected

    @pytest.mark.parametrize("target", [b"https://catalog/", b"HTTPS://catalog/x"])
    def test_https_target_is_refused_with_400(self, target: bytes) -> None:
        """An https:// absolute target is refused: 400 bad-request (CONNECT unsupported)."""
        with pytest.raises(ProxyError) as info:
            split_absolute_target(target)
        assert (info.value.status, info.value.cause) == (400, "bad-request")


class TestChunksAndHeaders:
    def test_encode_chunk_uses_hex_length(self) -> None:
        """A chunk is the hex length, CRLF, the data, CRLF."""
        assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
        assert encode_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"

    def test_last_chunk_ends_the_body(self) -> None:
        """The last chunk is a zero length and an empty trailer section."""
        assert LAST_CHUNK == b"0\r\n\r\n"

    def test_render_headers_writes_one_crlf_line_each(self) -> None:
        """Rendered headers are ``name: value`` lines each ending in CRLF."""
        assert render_headers([(b"a", b"1"), (b"B", b"two")]) == b"a: 1\r\nB: two\r\n"
        assert render_headers([]) == b""


class TestErrorResponse:
    def test_status_line_and_cause_header(self) -> None:
        """The status line has the standard reason; x-gossamer-error names the cause."""
        status, headers, _ = _parse_response(error_response(404, "unknown-service", "nope"))
        assert status == "HTTP/1.1 404 Not Found"
        assert headers["x-gossamer-error"] == "unknown-service"
        assert headers["content-type"].startswith("text/plain")

    def test_content_length_matches_body(self) -> None:
        """Content-Length is the exact byte length of the body, including non-ASCII detail."""
        _, headers, body = _parse_response(error_response(502, "connect-failed", "café ✓"))
        assert int(headers["content-length"]) == len(body)
        assert body == "502 connect-failed: café ✓\n".encode()

    def test_body_without_detail(self) -> None:
        """Without a detail the body is just the status and cause."""
        _, headers, body = _parse_response(error_response(503, "no-healthy-endpoints"))
        assert body == b"503 no-healthy-endpoints\n"
        assert int(headers["content-length"]) == len(body)

    def test_close_adds_connection_close(self) -> None:
        """``close=True`` adds ``connection: close``; otherwise there is no Connection header."""
        _, closing, _ = _parse_response(error_response(400, "bad-request", close=True))
        _, keeping, _ = _parse_response(error_response(400, "bad-request"))
        assert closing["connection"] == "close"
        assert "connection" not in keeping

    def test_request_id_is_echoed(self) -> None:
        """A request id given is sent back as x-request-id."""
        _, headers, _ = _parse_response(error_response(504, "upstream-timeout", request_id=b"r-7"))
        assert headers["x-request-id"] == "r-7"

    def test_head_only_has_no_body_but_same_length(self) -> None:
        """``head_only`` stops after the head; Content-Length still gives the GET body size."""
        full = error_response(404, "unknown-service", "x")
        head = error_response(404, "unknown-service", "x", head_only=True)
        assert head.endswith(b"\r\n\r\n")
        assert full.startswith(head)
        _, headers, body = _parse_response(head)
        assert body == b""
        assert int(headers["content-length"]) == len(full) - len(head)

    def test_unknown_status_gets_a_reason(self) -> None:
        """A status code outside the standard table still produces a valid status line."""
        status, _, _ = _parse_response(error_response(599, "custom"))
        assert status == "HTTP/1.1 599 Unknown"

    def test_proxy_error_carries_status_cause_detail(self) -> None:
        """ProxyError keeps status, cause and detail, and its message names all three."""
        err = ProxyError(502, "upstream-reset", "gone")
        assert (err.status, err.cause, err.detail) == (502, "upstream-reset", "gone")
        assert str(err) == "502 upstream-reset: gone"
        assert str(ProxyError(400, "bad-request")) == "400 bad-request"
