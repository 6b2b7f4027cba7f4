"""Differential tests: malformed and smuggling requests, sent to a Gossamer sidecar and to HAProxy.

Each case sends the same bytes, in the same test, to

- ``outbound``: the frontend sidecar's outbound port (plain, as the local app would), which
  forwards over mTLS to the catalog sidecar's inbound port and on to a recording app;
- ``inbound``: the ledger sidecar's inbound port, over mTLS with a certificate from the mesh
  CA (a peer sidecar, the security boundary for ``x-gossamer-peer-identity``), which forwards
  to its own recording app;
- ``haproxy``: HAProxy 2.6 in HTTP mode (started by PID from a generated config, deleting
  ``x-gossamer-peer-identity`` like a sidecar), forwarding to a third recording app.

Every app is ``tests/apps/recorder.py``: a deliberately naive HTTP/1.1 server (first
Content-Length wins, LF-only lines, stripped names, a second request in the buffer is a new
one) that records each byte it reads and answers each request it parses with 200 and a
sequence number, so a test can tell which of the app's answers reached the client.

What is asserted, for each Gossamer port (``check_gossamer``):

1. HAProxy refused (its app read nothing) → Gossamer refuses too: a 4xx (for HTTP/2 also a
   stream reset or GOAWAY), and its app read nothing;
2. the app saw no ``x-gossamer-peer-identity`` but the one the sidecar set, no trailer field
   promoted to a header, no ``host`` other than the ``:authority`` routed on, and no request
   the client did not intend unless the proxy answered it (an app answer that never reached
   the client is a request the proxy did not see);
3. no 5xx from Gossamer, and an answer (or a close) within the deadline: it never hangs.

What each proxy did, case by case, is the table ``OBSERVED`` below the cases (HAProxy 2.6.12
against Gossamer, with what Gossamer did before the fixes this suite brought). Run with ``-rA``
(or ``-s``) to see each case's comparison, including the requests each app parsed.

Budget: the rig starts once per module (about 4 s); each case runs the three targets at once
and waits ``QUIET`` after the answers it expects, so the module takes about 30 s.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import struct
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

from gossamer.control.ca import CertificateAuthority
from gossamer.identity.spiffe import SpiffeId
from tests.apps.recorder import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    H2_PREFACE,
    HEADERS,
    PING,
    RST_STREAM,
    SETTINGS,
    Inflater,
    RecordedRequest,
    Recorder,
    frame,
    hpack_literal,
)
from tests.integration.control_helpers import ControlPlaneProcess, running_control_plane
from tests.process_harness import Proc, Processes, wait_port, wait_ready
from tests.sidecar_harness import free_port
from tests.tools import require

TD = "gossamer.local"
FORGED = b"spiffe://gossamer.local/ns/default/sa/forged"
FORGED_MARK = b"sa/forged"
TRAILER_MARK = b"x-trailer-field"  # a name the tests only ever send in trailers
FRONTEND = f"spiffe://{TD}/ns/default/sa/frontend".encode()
TESTER = f"spiffe://{TD}/ns/default/sa/tester".encode()  # the peer the inbound tests play
HOST = b"catalog"

DEADLINE = 3.0  # seconds a proxy has to answer (or close) before the case counts as a hang
QUIET = 0.3  # once the answers expected are in: how long to wait for more
SETTLE = 0.1  # after the client is done: for bytes still on their way to the apps

SMUGGLED = (
    b"GET /smuggled HTTP/1.1\r\nHost: catalog\r\nx-gossamer-peer-identity: " + FORGED +
    b"\r\n\r\n"
)  # fmt: skip

HAPROXY_CFG = """\
global
    nbthread 1
defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 5s
    timeout server 5s
    timeout http-request 2s
frontend fe
    bind 127.0.0.1:{port}
    http-request del-header x-gossamer-peer-identity
    default_backend be
backend be
    server app 127.0.0.1:{backend_port}
"""


# === the cases ===


@dataclass(frozen=True)
class Case:
    id: str
    parts: tuple[bytes, ...]  # sent in order, a short pause between parts
    intended: tuple[bytes, ...] = (b"/",)  # paths of the requests the client means to make
    answers: int = 1  # answers to wait for before the quiet period may end the read


def h1(*lines: bytes, body: bytes = b"", method: bytes = b"POST", target: bytes = b"/",
       host: bool = True) -> bytes:  # fmt: skip
    """A request with CRLF line ends: start line, ``Host: catalog`` and ``lines``."""
    head = [method + b" " + target + b" HTTP/1.1", *([b"Host: catalog"] if host else []), *lines]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def case(
    id: str, *parts: bytes, intended: tuple[bytes, ...] = (b"/",), answers: int = 1
) -> Case:
    return Case(id, parts, intended, answers)


CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"
TE_CL_BODY = b"%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
CL_TE_BODY = b"0\r\n\r\n" + SMUGGLED
WS = b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" \
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="  # fmt: skip
H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__"


def _te(value: bytes, *, cl: bool = False) -> bytes:
    """A chunked ``hello`` under an obfuscated Transfer-Encoding line (``value``: the whole
    line, bytes as sent), with a Content-Length of 4 too when ``cl`` (TE.TE)."""
    lines = [value, *([b"Content-Length: 4"] if cl else [])]
    return h1(*lines, body=CHUNKED_HELLO)


HTTP1_CASES = [
    # --- sanity: what a proxy must forward ---
    case("get", h1(method=b"GET")),
    case("forged-identity-header", h1(b"x-gossamer-peer-identity: " + FORGED, method=b"GET")),
    case("chunked-body", h1(b"Transfer-Encoding: chunked", body=CHUNKED_HELLO)),
    # --- CL/TE conflicts ---
    case("cl.te", h1(b"Content-Length: %d" % len(CL_TE_BODY), b"Transfer-Encoding: chunked",
                     body=CL_TE_BODY)),
    case("te.cl", h1(b"Transfer-Encoding: chunked", b"Content-Length: 4", body=TE_CL_BODY)),
    case("cl-duplicate-same", h1(b"Content-Length: 5", b"Content-Length: 5", body=b"hello")),
    case("cl-duplicate-different",
         h1(b"Content-Length: 5", b"Content-Length: %d" % (5 + len(SMUGGLED)),
            body=b"hello" + SMUGGLED)),
    case("cl-list", h1(b"Content-Length: 5, 5", body=b"hello")),
    case("cl-plus", h1(b"Content-Length: +5", body=b"hello")),
    case("cl-minus", h1(b"Content-Length: -5", body=b"hello")),
    case("cl-space-padded", h1(b"Content-Length:   5  ", body=b"hello")),
    case("cl-inner-space", h1(b"Content-Length: 5 5", body=b"hello")),
    case("cl-hex", h1(b"Content-Length: 0x5", body=b"hello")),
    case("cl-leading-zeros", h1(b"Content-Length: 0005", body=b"hello")),
    # --- Transfer-Encoding variants (alone, then with a Content-Length: TE.TE) ---
    case("te-chunked-identity", _te(b"Transfer-Encoding: chunked, identity")),
    case("te-xchunked", _te(b"Transfer-Encoding: xchunked")),
    case("te-gzip-chunked", _te(b"Transfer-Encoding: gzip, chunked")),
    case("te-leading-comma", _te(b"Transfer-Encoding: , chunked")),
    case("te-leading-space-value", _te(b"Transfer-Encoding:  chunked")),
    case("te-leading-space-line", _te(b" Transfer-Encoding: chunked")),
    case("te-space-before-colon", _te(b"Transfer-Encoding : chunked")),
    case("te-capitalised", _te(b"Transfer-Encoding: Chunked")),
    case("te-tab", _te(b"Transfer-Encoding:\tchunked")),
    case("te-obs-fold", _te(b"Transfer-Encoding:\r\n chunked")),
    case("te-duplicate", _te(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked")),
    case("te-duplicate-identity-chunked",
         _te(b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked")),
    case("te-chunked-then-x", _te(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x")),
    case("te-lf-before-colon", _te(b"Transfer-Encoding\n: chunked")),
    case("te.te-xchunked+cl", _te(b"Transfer-Encoding: xchunked", cl=True)),
    case("te.te-space-before-colon+cl", _te(b"Transfer-Encoding : chunked", cl=True)),
    case("te.te-leading-space-line+cl", _te(b" Transfer-Encoding: chunked", cl=True)),
    case("te.te-tab+cl", _te(b"Transfer-Encoding:\tchunked", cl=True)),
    case("te-http10", h1(b"Transfer-Encoding: chunked", body=CHUNKED_HELLO).replace(
        b"HTTP/1.1", b"HTTP/1.0", 1)),
    # --- line folding, line ends, NUL ---
    case("obs-fold-identity", h1(b"X-A: b\r\n x-gossamer-peer-identity: " + FORGED,
                                 method=b"GET")),
    case("obs-fold-host", h1(b"X-A: b", method=b"GET").replace(b"catalog", b"catalog\r\n evil")),
    case("bare-lf", b"GET / HTTP/1.1\nHost: catalog\n\n"),
    case("bare-lf-identity",
         b"GET / HTTP/1.1\r\nHost: catalog\nx-gossamer-peer-identity: " + FORGED + b"\r\n\r\n"),
    case("bare-cr", b"GET / HTTP/1.1\rHost: catalog\r\r\n\r\n"),
    case("bare-cr-identity",
         b"GET / HTTP/1.1\r\nHost: catalog\rx-gossamer-peer-identity: " + FORGED + b"\r\n\r\n"),
    case("nul-header-name", h1(b"X-A\x00b: c", method=b"GET")),
    case("nul-header-value", h1(b"X-A: b\x00c", method=b"GET")),
    case("nul-target", h1(method=b"GET", target=b"/a\x00b")),
    case("two-hosts", h1(b"Host: evil.example", method=b"GET")),
    # --- chunk sizes and extensions ---
    case("chunk-size-overflow", h1(b"Transfer-Encoding: chunked",
                                   body=b"10000000000000005\r\nhello\r\n0\r\n\r\n")),
    case("chunk-size-negative", h1(b"Transfer-Encoding: chunked",
                                   body=b"-5\r\nhello\r\n0\r\n\r\n")),
    case("chunk-size-plus", h1(b"Transfer-Encoding: chunked", body=b"+5\r\nhello\r\n0\r\n\r\n")),
    case("chunk-size-0x", h1(b"Transfer-Encoding: chunked", body=b"0x5\r\nhello\r\n0\r\n\r\n")),
    case("chunk-size-long", h1(b"Transfer-Encoding: chunked",
                               body=b"0000000000000000000005\r\nhello\r\n0\r\n\r\n")),
    case("chunk-size-lf-only", h1(b"Transfer-Encoding: chunked",
                                  body=b"5\nhello\n0\n\n")),
    case("chunk-ext-quoted", h1(b"Transfer-Encoding: chunked",
                                body=b'5;a="b;c"\r\nhello\r\n0\r\n\r\n')),
    case("chunk-ext-quoted-crlf", h1(b"Transfer-Encoding: chunked",
                                     body=b'5;a="b\r\nc"\r\nhello\r\n0\r\n\r\n')),
    case("chunk-ext-bare-cr", h1(b"Transfer-Encoding: chunked",
                                 body=b"5;a=b\rc\r\nhello\r\n0\r\n\r\n")),
    # --- trailers with fields that must never become headers ---
    case("trailer-content-length", h1(b"Transfer-Encoding: chunked",
                                      body=b"5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n")),
    case("trailer-host", h1(b"Transfer-Encoding: chunked",
                            body=b"5\r\nhello\r\n0\r\nHost: evil.example\r\n\r\n")),
    case("trailer-identity", h1(b"Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n"
                                b"x-gossamer-peer-identity: " + FORGED + b"\r\n"
                                + TRAILER_MARK + b": 1\r\n\r\n")),
    case("pipelined-trailer-fields",
         h1(method=b"GET", target=b"/first") + h1(
             b"Transfer-Encoding: chunked", target=b"/second",
             body=b"5\r\nhello\r\n0\r\nx-gossamer-peer-identity: " + FORGED + b"\r\n"
             + TRAILER_MARK + b": 1\r\n\r\n"),
         intended=(b"/first", b"/second"), answers=2),
    case("pipelined-trailer-host",
         h1(method=b"GET", target=b"/first") + h1(
             b"Transfer-Encoding: chunked", target=b"/second",
             body=b"5\r\nhello\r\n0\r\nHost: evil.example\r\n\r\n"),
         intended=(b"/first", b"/second"), answers=2),
    # --- targets and methods ---
    case("absolute-form-host-same",
         h1(b"Host: catalog:80", method=b"GET", target=b"http://Catalog/abs", host=False),
         intended=(b"/abs",)),
    case("absolute-form-host-mismatch",
         h1(b"Host: evil.example", method=b"GET", target=b"http://catalog/abs", host=False),
         intended=(b"/abs", b"http://catalog/abs")),
    case("connect", h1(method=b"CONNECT", target=b"catalog:80") + SMUGGLED,
         intended=(b"catalog:80", b"/smuggled"), answers=2),
    # --- pipelining, upgrades ---
    case("pipelined-identity", h1(method=b"GET", target=b"/first")
         + h1(b"x-gossamer-peer-identity: " + FORGED, method=b"GET", target=b"/second"),
         intended=(b"/first", b"/second"), answers=2),
    case("pipelined-identity-twice", h1(method=b"GET", target=b"/first")
         + h1(b"X-Gossamer-Peer-Identity: " + FORGED, b"x-gossamer-peer-identity: " + FORGED,
              method=b"GET", target=b"/second"),
         intended=(b"/first", b"/second"), answers=2),
    case("upgrade-then-smuggled", h1(WS, method=b"GET", target=b"/ws") + SMUGGLED,
         intended=(b"/ws",)),
    case("upgrade-then-smuggled-later", h1(WS, method=b"GET", target=b"/ws"), SMUGGLED,
         intended=(b"/ws",)),
    case("h2c-upgrade", h1(H2C, method=b"GET", target=b"/h2c")
         + H2_PREFACE + frame(SETTINGS, 0, 0, b""), intended=(b"/h2c",)),
    case("h2c-upgrade-then-smuggled", h1(H2C, method=b"GET", target=b"/h2c") + SMUGGLED,
         intended=(b"/h2c",)),
]


# --- HTTP/2 (h2c prior knowledge on outbound and HAProxy; h2 over mTLS on inbound) ---


@dataclass(frozen=True)
class H2Case:
    id: str
    headers: tuple[tuple[bytes, bytes], ...]  # the request's header block, as sent
    body: bytes = b""
    trailers: tuple[tuple[bytes, bytes], ...] = ()


def _req(
    *extra: tuple[bytes, bytes], method: bytes = b"GET", authority: bool = True
) -> tuple[tuple[bytes, bytes], ...]:
    pseudo = [(b":method", method), (b":scheme", b"http"), (b":path", b"/")]
    if authority:
        pseudo.append((b":authority", HOST))
    return (*pseudo, *extra)


ID = (b"x-gossamer-peer-identity", FORGED)
H2_CASES = [
    H2Case("h2-get", _req()),
    H2Case("h2-forged-identity", _req(ID)),
    H2Case("h2-identity-in-trailers", _req(method=b"POST"), b"hello",
           (ID, (TRAILER_MARK, b"1"))),
    H2Case("h2-pseudo-in-trailers", _req(method=b"POST"), b"hello",
           ((b":path", b"/smuggled"),)),
    H2Case("h2-uppercase-name", _req((b"X-Upper", b"1"))),
    H2Case("h2-connection", _req((b"connection", b"keep-alive"))),
    H2Case("h2-transfer-encoding", _req((b"transfer-encoding", b"chunked"), method=b"POST"),
           b"5\r\nhello\r\n0\r\n\r\n"),
    H2Case("h2-keep-alive", _req((b"keep-alive", b"timeout=5"))),
    H2Case("h2-upgrade", _req((b"upgrade", b"h2c"))),
    H2Case("h2-te-gzip", _req((b"te", b"gzip"))),
    H2Case("h2-te-trailers", _req((b"te", b"trailers"))),
    H2Case("h2-duplicate-path", _req((b":path", b"/smuggled"))),
    H2Case("h2-pseudo-after-regular", (*_req()[:3], (b"x-a", b"1"), (b":authority", HOST))),
    H2Case("h2-no-authority-host", _req((b"host", HOST), authority=False)),
    H2Case("h2-host-mismatch", _req((b"host", b"evil.example"))),
    H2Case("h2-crlf-in-value", _req((b"x-a", b"b\r\nx-gossamer-peer-identity: " + FORGED))),
    H2Case("h2-nul-in-value", _req((b"x-a", b"b\x00c"))),
    H2Case("h2-content-length-mismatch", _req((b"content-length", b"50"), method=b"POST"),
           b"hello"),
]


# === what each proxy did ===

# Case -> (what HAProxy 2.6.12 did, what Gossamer does; "was": before the fixes this suite
# brought). fwd: the app parsed the request(s) and its answer reached the client; 400c/422c:
# that answer and a close, the app read nothing; rst: the HTTP/2 stream was reset (PROTOCOL_
# ERROR), the app saw nothing. "removed"/"replaced": the client's x-gossamer-peer-identity.
# Both Gossamer ports (outbound and inbound) answer alike. A HAProxy that no longer does what
# its column says (refuses instead of forwarding, or the reverse) is warned about, not failed.
#  [1] the line starting with a space is folded into Host: no Transfer-Encoding, so the
#      chunked body is read as the next request (400).
#  [2] CONNECT is forwarded; the app's 200 opens a tunnel, and /smuggled, forged identity
#      included, reaches the app inside it. Gossamer's outbound port answers CONNECT itself
#      (issue 15): the tunnel's /smuggled goes through the pipeline to catalog, the forged
#      identity replaced by the caller's; the inbound port refuses CONNECT (400c).
#  [3] the app answers 200, not 101: HAProxy reads the bytes after the upgrade request as the
#      next request, and forwards and answers /smuggled (seen, so not smuggled; Gossamer drops
#      the held bytes and closes, docs/internals.md §6).
#  [4] Upgrade: h2c and HTTP2-Settings reach the app; then the h2 preface is read as a request.
#  [5] before the fix, trailer fields became headers of the pipelined /second, rendered when its
#      turn came (a trailer x-trailer-field reached the app as a header; a trailer Host made two
#      Hosts, refused by the next sidecar).
#  [6] the trailers' :path is refused after the head and body went to the app (INTERNAL_ERROR).
#  [7] before the fix, the app got both :authority catalog and host evil.example.
OBSERVED: dict[str, tuple[str, str]] = {
    "get":                           ("fwd",                        "fwd"),
    "forged-identity-header":        ("fwd, removed",               "fwd, replaced"),
    "chunked-body":                  ("fwd",                        "fwd"),
    "cl.te":                         ("fwd chunked, CL dropped",    "400c"),
    "te.cl":                         ("fwd chunked, CL dropped",    "400c"),
    "cl-duplicate-same":             ("fwd, one CL",                "400c"),
    "cl-duplicate-different":        ("400c",                       "400c"),
    "cl-list":                       ("fwd, CL: 5",                 "400c"),
    "cl-plus":                       ("400c",                       "400c"),
    "cl-minus":                      ("400c",                       "400c"),
    "cl-space-padded":               ("fwd",                        "fwd"),
    "cl-inner-space":                ("400c",                       "400c"),
    "cl-hex":                        ("400c",                       "400c"),
    "cl-leading-zeros":              ("fwd",                        "fwd"),
    "te-chunked-identity":           ("400c",                       "400c"),
    "te-xchunked":                   ("400c",                       "400c (was: head fwd)"),
    "te-gzip-chunked":               ("422c",                       "400c (was: fwd)"),
    "te-leading-comma":              ("422c",                       "400c (was: fwd)"),
    "te-leading-space-value":        ("fwd",                        "fwd"),
    "te-leading-space-line":         ("fwd no body, then 400c [1]", "400c"),
    "te-space-before-colon":         ("400c",                       "400c"),
    "te-capitalised":                ("fwd",                        "fwd"),
    "te-tab":                        ("fwd",                        "fwd"),
    "te-obs-fold":                   ("fwd, unfolded",              "400c"),
    "te-duplicate":                  ("400c",                       "400c"),
    "te-duplicate-identity-chunked": ("422c",                       "400c (was: fwd chunked)"),
    "te-chunked-then-x":             ("400c",                       "400c"),
    "te-lf-before-colon":            ("400c",                       "400c"),
    "te.te-xchunked+cl":             ("400c",                       "400c"),
    "te.te-space-before-colon+cl":   ("400c",                       "400c"),
    "te.te-leading-space-line+cl":   ("fwd CL 4, then 400c [1]",    "400c"),
    "te.te-tab+cl":                  ("fwd chunked, CL dropped",    "400c"),
    "te-http10":                     ("fwd chunked",                "400c"),
    "obs-fold-identity":             ("fwd, unfolded into X-A",     "400c"),
    "obs-fold-host":                 ("fwd, unfolded",              "400c"),
    "bare-lf":                       ("fwd",                        "400c (was: 505)"),
    "bare-lf-identity":              ("fwd, removed",               "400c"),
    "bare-cr":                       ("400c",                       "400c (was: 505)"),
    "bare-cr-identity":              ("400c",                       "400c"),
    "nul-header-name":               ("400c",                       "400c"),
    "nul-header-value":              ("fwd, NUL kept",              "400c"),
    "nul-target":                    ("400c",                       "400c"),
    "two-hosts":                     ("400c",                       "400c"),
    "chunk-size-overflow":           ("400c",                       "400c (was: head fwd)"),
    "chunk-size-negative":           ("400c",                       "400c (was: head fwd)"),
    "chunk-size-plus":               ("400c",                       "400c (was: head fwd)"),
    "chunk-size-0x":                 ("400c",                       "400c"),
    "chunk-size-long":               ("fwd",                        "fwd"),
    "chunk-size-lf-only":            ("fwd",                        "400c"),
    "chunk-ext-quoted":              ("fwd",                        "fwd"),
    "chunk-ext-quoted-crlf":         ("400c",                       "400c (was: head fwd)"),
    "chunk-ext-bare-cr":             ("400c",                       "400c"),
    "trailer-content-length":        ("fwd, trailer kept",          "400c"),
    "trailer-host":                  ("fwd, trailer kept",          "fwd, trailer dropped"),
    "trailer-identity":              ("fwd, forged id in trailers", "fwd, trailers dropped"),
    "pipelined-trailer-fields":      ("fwd both, trailers kept",    "fwd both [5]"),
    "pipelined-trailer-host":        ("fwd both, trailer kept",     "fwd both [5]"),
    "absolute-form-host-same":       ("fwd",                        "fwd"),
    "absolute-form-host-mismatch":   ("400c",                       "400c (was: fwd)"),
    "connect":                       ("fwd, then a tunnel [2]",     "200, a tunnel [2]"),
    "pipelined-identity":            ("fwd both, removed",          "fwd both, replaced"),
    "pipelined-identity-twice":      ("fwd both, removed",          "fwd both, replaced"),
    "upgrade-then-smuggled":         ("fwd; /smuggled fwd too [3]", "fwd, 200, close"),
    "upgrade-then-smuggled-later":   ("fwd; /smuggled fwd too [3]", "fwd, 200, close"),
    "h2c-upgrade":                   ("fwd, Upgrade kept; 400c [4]", "fwd, 200, close"),
    "h2c-upgrade-then-smuggled":     ("fwd; /smuggled fwd too [3]", "fwd, 200, close"),
    "h2-get":                        ("fwd",                        "fwd"),
    "h2-forged-identity":            ("fwd, removed",               "fwd, replaced"),
    "h2-identity-in-trailers":       ("fwd, forged id in trailers", "fwd, id removed"),
    "h2-pseudo-in-trailers":         ("fwd head+body, then rst [6]", "rst"),
    "h2-uppercase-name":             ("rst",                        "rst"),
    "h2-connection":                 ("rst",                        "rst"),
    "h2-transfer-encoding":          ("rst",                        "rst"),
    "h2-keep-alive":                 ("rst",                        "rst"),
    "h2-upgrade":                    ("rst",                        "rst"),
    "h2-te-gzip":                    ("rst",                        "rst"),
    "h2-te-trailers":                ("fwd",                        "fwd"),
    "h2-duplicate-path":             ("rst",                        "rst"),
    "h2-pseudo-after-regular":       ("rst",                        "rst"),
    "h2-no-authority-host":          ("fwd",                        "fwd"),
    "h2-host-mismatch":              ("fwd, Host := :authority",    "fwd, Host dropped [7]"),
    "h2-crlf-in-value":              ("rst",                        "rst"),
    "h2-nul-in-value":               ("rst",                        "rst"),
    "h2-content-length-mismatch":    ("rst",                        "rst"),
}


# === the rig: a control plane, three sidecars, HAProxy and three recording apps ===


@dataclass
class Rig:
    outbound_port: int
    inbound_port: int
    haproxy_port: int
    mesh_app: Recorder  # behind catalog (the outbound path's destination)
    direct_app: Recorder  # behind ledger (the inbound port the tests call directly)
    haproxy_app: Recorder
    peer_context: Callable[[str], ssl.SSLContext]
    pool: ThreadPoolExecutor


def _peer_context_factory(cp: ControlPlaneProcess, tmp: Path) -> Callable[[str], ssl.SSLContext]:
    """TLS client contexts of a peer sidecar (identity ``tester``), one per ALPN protocol."""
    ca = CertificateAuthority.load_or_create(cp.data_dir)
    cert, key = ca.issue_keypair(SpiffeId(TD, "default", "tester"), timedelta(hours=1))
    (tmp / "tester.crt").write_bytes(cert)
    (tmp / "tester.key").write_bytes(key)
    contexts: dict[str, ssl.SSLContext] = {}

    def context(alpn: str) -> ssl.SSLContext:
        if alpn not in contexts:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False  # sidecars present SPIFFE IDs, not DNS names
            ctx.load_verify_locations(cadata=cp.root_pem.decode())
            ctx.load_cert_chain(tmp / "tester.crt", tmp / "tester.key")
            ctx.set_alpn_protocols([alpn])
            contexts[alpn] = ctx
        return contexts[alpn]

    return context


def _start_haproxy(procs: Processes, tmp: Path, backend_port: int) -> Proc:
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    assert binary is not None
    port = free_port()
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=port, backend_port=backend_port))
    proc = procs.spawn("haproxy", [binary, "-db", "-f", str(cfg)])
    proc.ports["listen"] = port
    return proc


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    require(
        bool(shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")),
        "HAProxy (Debian haproxy)",
    )
    tmp = tmp_path_factory.mktemp("differential")
    apps: list[Recorder] = []
    pool = ThreadPoolExecutor(3, thread_name_prefix="differential")
    try:
        apps = [Recorder(name) for name in ("catalog", "ledger", "haproxy")]
        mesh_app, direct_app, haproxy_app = apps
        with running_control_plane(tmp / "cp") as cp:
            procs = Processes(tmp)
            try:
                haproxy = _start_haproxy(procs, tmp, haproxy_app.port)
                catalog = procs.sidecar(cp, "catalog-sidecar", "catalog", mesh_app.port)
                ledger = procs.sidecar(cp, "ledger-sidecar", "ledger", direct_app.port)
                frontend = procs.sidecar(cp, "frontend-sidecar", "frontend", None)
                for sidecar in (catalog, ledger, frontend):
                    wait_ready(sidecar)
                wait_port(haproxy.ports["listen"])
                r = Rig(
                    frontend.ports["outbound"], ledger.ports["inbound"],
                    haproxy.ports["listen"], mesh_app, direct_app, haproxy_app,
                    _peer_context_factory(cp, tmp), pool,
                )  # fmt: skip
                _warm_up(r)
                yield r
            finally:
                procs.stop_all()
    finally:
        pool.shutdown(wait=True)
        for app in apps:
            app.close()


def _warm_up(rig: Rig) -> None:
    """Until the frontend sidecar has discovered catalog (on first use) and a plain GET
    crosses each path."""
    deadline = time.monotonic() + 20
    while True:
        seen = _exchange(rig, "outbound", (h1(method=b"GET"),), 1)
        if seen.statuses[:1] == [200] and seen.seqs:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"the mesh path never answered 200: {seen}")
        time.sleep(0.2)
    for target in ("inbound", "haproxy"):
        seen = _exchange(rig, target, (h1(method=b"GET"),), 1)
        assert seen.statuses[:1] == [200], (target, seen)


# === one client's view of one proxy ===


@dataclass
class Seen:
    """What the client got back from one proxy."""

    statuses: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)  # x-recorder-seq of the app's answers
    errors: list[str] = field(default_factory=list)  # x-gossamer-error values
    reset: int | None = None  # HTTP/2: RST_STREAM error code on the request's stream
    goaway: int | None = None  # HTTP/2: GOAWAY error code
    closed: bool = False
    hung: bool = False
    rest: bytes = b""  # bytes that were no response
    # A CONNECT was sent first: a 2xx without framing opens a tunnel (RFC 9112 6.3), no body.
    tunnel_pending: bool = False

    def summary(self) -> str:
        parts = [",".join(map(str, self.statuses)) or "-"]
        if self.reset is not None:
            parts.append(f"rst({self.reset})")
        if self.goaway is not None:
            parts.append(f"goaway({self.goaway})")
        if self.closed:
            parts.append("closed")
        if self.hung:
            parts.append("HUNG")
        return " ".join(parts)


@dataclass
class Result:
    target: str
    seen: Seen
    raw: bytes  # every byte its app read
    requests: list[RecordedRequest]  # every request its app parsed
    h2_streams: int  # HTTP/2 streams its app saw begin

    @property
    def forwarded(self) -> bool:
        return bool(self.raw) or bool(self.requests) or self.h2_streams > 0

    @property
    def refused(self) -> bool:
        return not self.forwarded

    def summary(self) -> str:
        app = f"app: {len(self.requests)} req" if self.forwarded else "app: nothing"
        return f"{self.seen.summary()} ({app})"


def _connect(rig: Rig, target: str, alpn: str = "http/1.1") -> socket.socket:
    port = {"outbound": rig.outbound_port, "inbound": rig.inbound_port,
            "haproxy": rig.haproxy_port}[target]  # fmt: skip
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    if target == "inbound":
        return rig.peer_context(alpn).wrap_socket(sock)
    return sock


def _exchange(rig: Rig, target: str, parts: tuple[bytes, ...], answers: int) -> Seen:
    seen = Seen(tunnel_pending=parts[0].startswith(b"CONNECT "))
    try:
        sock = _connect(rig, target)
    except (OSError, ssl.SSLError) as exc:
        seen.closed = True
        seen.rest = repr(exc).encode()
        return seen
    with sock:
        # The proxy may close after refusing the first part: read what it said all the same.
        with contextlib.suppress(OSError, ssl.SSLError):
            for i, part in enumerate(parts):
                if i:
                    time.sleep(0.1)
                sock.sendall(part)
        _read_http1(sock, seen, answers)
    return seen


def _read_http1(sock: socket.socket, seen: Seen, answers: int) -> None:
    buf = b""
    deadline = time.monotonic() + DEADLINE
    while True:
        buf = _parse_responses(buf, seen, final=False)
        now = time.monotonic()
        done = len(seen.statuses) >= answers
        if now >= deadline:
            seen.hung = not done
            break
        sock.settimeout(min(QUIET, deadline - now) if done else deadline - now)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            if done:
                break
            continue
        except (OSError, ssl.SSLError):
            data = b""
        if not data:
            seen.closed = True
            buf = _parse_responses(buf, seen, final=True)
            break
        buf += data
    seen.rest = buf


def _parse_responses(buf: bytes, seen: Seen, *, final: bool) -> bytes:
    """Take every whole response off the front of ``buf`` (``final``: the peer closed, so a
    body without framing ends here); the bytes left."""
    for _ in range(64):
        if not buf.startswith(b"HTTP/"):
            return buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return buf
        lines = buf[:end].split(b"\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            return buf
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        rest = buf[end + 4 :]
        if 100 <= status < 200 or status in (204, 304):
            body_end = 0
        elif b"content-length" in headers:
            body_end = int(headers[b"content-length"])
            if len(rest) < body_end:
                return buf
        elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            found = _chunked_end(rest)
            if found is None:
                return buf
            body_end = found
        elif seen.tunnel_pending and 200 <= status < 300:
            body_end = 0
        elif final:
            body_end = len(rest)
        else:
            return buf
        if status >= 200:
            seen.tunnel_pending = False
            seen.statuses.append(status)
            if b"x-recorder-seq" in headers:
                seen.seqs.append(int(headers[b"x-recorder-seq"]))
            if b"x-gossamer-error" in headers:
                seen.errors.append(headers[b"x-gossamer-error"].decode("latin-1"))
        buf = rest[body_end:]
    return buf


def _chunked_end(data: bytes) -> int | None:
    pos = 0
    for _ in range(10_000):
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(data[pos:line_end].split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", pos - 2)
            return None if trailer_end < 0 else trailer_end + 4
        pos += size + 2
        if pos > len(data):
            return None
    return None


# --- HTTP/2 client ---


def _h2_request_frames(case: H2Case) -> bytes:
    block = b"".join(hpack_literal(n, v) for n, v in case.headers)
    ends = not case.body and not case.trailers
    out = [frame(HEADERS, END_HEADERS | (END_STREAM if ends else 0), 1, block)]
    if case.body:
        out.append(frame(DATA, 0 if case.trailers else END_STREAM, 1, case.body))
    if case.trailers:
        trailers = b"".join(hpack_literal(n, v) for n, v in case.trailers)
        out.append(frame(HEADERS, END_HEADERS | END_STREAM, 1, trailers))
    return b"".join(out)


def _h2_exchange(rig: Rig, target: str, case: H2Case) -> Seen:
    seen = Seen()
    try:
        sock = _connect(rig, target, alpn="h2")
    except (OSError, ssl.SSLError) as exc:
        seen.closed = True
        seen.rest = repr(exc).encode()
        return seen
    with sock:
        with contextlib.suppress(OSError, ssl.SSLError):
            sock.sendall(H2_PREFACE + frame(SETTINGS, 0, 0, b"") + _h2_request_frames(case))
        _read_h2(sock, seen)
    return seen


def _read_h2(sock: socket.socket, seen: Seen) -> None:
    inflater = Inflater()
    buf = b""
    block = b""
    deadline = time.monotonic() + DEADLINE
    while True:
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            kind, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            payload, buf = buf[9 : 9 + length], buf[9 + length :]
            if kind in (SETTINGS, PING) and not flags & 1:  # acknowledge: ACK is flag 1
                with contextlib.suppress(OSError, ssl.SSLError):
                    sock.sendall(frame(kind, 1, 0, payload if kind == PING else b""))
            elif kind == GOAWAY:
                seen.goaway = struct.unpack(">I", payload[4:8])[0]
                return
            elif kind == RST_STREAM and stream == 1:
                seen.reset = struct.unpack(">I", payload[:4])[0]
                return
            elif kind in (HEADERS, CONTINUATION) and stream == 1:
                block += payload  # the tests' peers send no padding or priority
                if flags & END_HEADERS:
                    fields = dict(inflater.inflate(block))
                    block = b""
                    if b":status" in fields and int(fields[b":status"]) >= 200:
                        seen.statuses.append(int(fields[b":status"]))
                        if b"x-recorder-seq" in fields:
                            seen.seqs.append(int(fields[b"x-recorder-seq"]))
                        if b"x-gossamer-error" in fields:
                            seen.errors.append(fields[b"x-gossamer-error"].decode("latin-1"))
                if flags & END_STREAM:
                    return
            elif kind == DATA and stream == 1 and flags & END_STREAM:
                return
        now = time.monotonic()
        if now >= deadline:
            seen.hung = True
            return
        sock.settimeout(deadline - now)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except (OSError, ssl.SSLError):
            data = b""
        if not data:
            seen.closed = True
            return
        buf += data


# === running a case against every target ===


def _run(
    rig: Rig, targets: tuple[str, ...], send: Callable[[str], Seen]
) -> dict[str, Result]:
    apps = {"outbound": rig.mesh_app, "inbound": rig.direct_app, "haproxy": rig.haproxy_app}
    for target in targets:
        apps[target].reset()
    time.sleep(0.02)  # apps' connections closed by the reset: let the proxies see it
    futures = {target: rig.pool.submit(send, target) for target in targets}
    seen = {target: future.result(DEADLINE * 3) for target, future in futures.items()}
    time.sleep(SETTLE)
    results = {}
    for target in targets:
        raw, requests, streams = apps[target].snapshot()
        results[target] = Result(target, seen[target], raw, requests, streams)
    return results


def _path(target: bytes) -> bytes:
    """The path of an origin- or absolute-form target."""
    if target.startswith((b"http://", b"https://")):
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        return rest[slash:] if slash >= 0 else b"/"
    return target


def check_gossamer(
    result: Result, haproxy: Result, intended: tuple[bytes, ...], legit: bytes, h2: bool = False
) -> list[str]:
    """What is wrong with Gossamer's handling of one case on one port (empty: nothing)."""
    problems: list[str] = []
    seen = result.seen
    # (1) what HAProxy refuses, Gossamer refuses (a 4xx; for HTTP/2 also a reset or GOAWAY)
    if haproxy.refused:
        if result.forwarded:
            problems.append("HAProxy refused it, Gossamer forwarded it")
        refused = any(400 <= s < 500 for s in seen.statuses[:1]) or (
            h2 and (seen.reset is not None or seen.goaway is not None)
        )
        if not refused:
            problems.append("HAProxy refused it, Gossamer did not answer with a 4xx")
    # (2) no identity but the sidecar's; no trailer field as a header; nothing smuggled
    relayed = set(seen.seqs)
    for request in result.requests:
        for name, value in request.headers:
            if name.strip().lower() == b"x-gossamer-peer-identity" and value != legit:
                problems.append(f"the app saw x-gossamer-peer-identity: {value!r}")
            if FORGED_MARK in value:
                problems.append(f"the app saw the forged identity in {name!r}")
            if name.strip().lower() == TRAILER_MARK:
                problems.append("a trailer field reached the app as a header")
        authority = [v for n, v in request.headers if n == b":authority"]
        hosts = [v for n, v in request.headers if n == b"host"]
        if authority and any(h.lower() != authority[0].lower() for h in hosts):
            problems.append(f"the app saw :authority {authority[0]!r} but Host {hosts!r}")
        if FORGED_MARK in request.head or any(FORGED_MARK in v for _, v in request.trailers):
            problems.append(f"the forged identity is in the head or trailers of {request.seq}")
        if request.seq not in relayed and _path(request.target) not in intended:
            problems.append(
                f"the app parsed {request.method!r} {request.target!r}, which the client did "
                "not intend and never got an answer for (smuggled)"
            )
    # More requests than the client meant, with answers that never reached it: one of them
    # is a request the proxy did not see (even if its path looks like an intended one).
    answered = sum(r.seq in relayed for r in result.requests)
    unanswered = len(result.requests) - answered
    if unanswered > max(0, len(intended) - answered):
        problems.append(f"the app parsed {len(result.requests)} requests for {len(intended)} "
                        f"intended; {unanswered} answers never reached the client")  # fmt: skip
    # (3) never a 5xx for malformed input, never a hang
    if any(s >= 500 for s in seen.statuses):
        problems.append(f"Gossamer answered {seen.statuses} ({seen.errors})")
    if seen.hung:
        problems.append("Gossamer neither answered nor closed in time (a hang)")
    return problems


_SHOWN = {b"host", b":authority", b"x-gossamer-peer-identity", b"transfer-encoding",
          b"content-length", b"upgrade", b"connection", TRAILER_MARK}  # fmt: skip


def _verdict(case_id: str, results: dict[str, Result], problems: dict[str, list[str]]) -> str:
    rows = [f"{case_id}: " + "; ".join(f"{t} {r.summary()}" for t, r in results.items())]
    for target, result in results.items():
        for request in result.requests:
            fields = [f for f in request.headers if f[0].lower() in _SHOWN]
            rows.append(f"    {target} app: {request.method!r} {request.target!r} {fields} "
                        f"trailers={request.trailers}")  # fmt: skip
    for target, found in problems.items():
        rows += [f"  {target}: {p}" for p in found]
    return "\n".join(rows)


def _note_haproxy(expected: str, result: Result) -> None:
    """The table documents HAProxy 2.6.12; another version may differ: say so, don't fail."""
    refused_expected = not expected.startswith("fwd")
    if refused_expected != result.refused:
        warnings.warn(
            f"HAProxy now {'refuses' if result.refused else 'forwards'} a case the table says "
            f"it {expected!r}: {result.summary()}",
            stacklevel=2,
        )


# === the tests ===


@pytest.mark.parametrize("case", HTTP1_CASES, ids=[c.id for c in HTTP1_CASES])
def test_http1(rig: Rig, case: Case) -> None:
    results = _run(
        rig, ("haproxy", "outbound", "inbound"),
        lambda target: _exchange(rig, target, case.parts, case.answers),
    )  # fmt: skip
    haproxy = results["haproxy"]
    _note_haproxy(OBSERVED[case.id][0], haproxy)
    problems = {
        "outbound": check_gossamer(results["outbound"], haproxy, case.intended, FRONTEND),
        "inbound": check_gossamer(results["inbound"], haproxy, case.intended, TESTER),
    }
    print(_verdict(case.id, results, problems))  # the comparison, shown with -s or -rA
    assert not any(problems.values()), _verdict(case.id, results, problems)


@pytest.mark.parametrize("case", H2_CASES, ids=[c.id for c in H2_CASES])
def test_h2(rig: Rig, case: H2Case) -> None:
    results = _run(rig, ("haproxy", "outbound", "inbound"),
                   lambda target: _h2_exchange(rig, target, case))  # fmt: skip
    haproxy = results["haproxy"]
    _note_haproxy(OBSERVED[case.id][0], haproxy)
    problems = {
        "outbound": check_gossamer(results["outbound"], haproxy, (b"/",), FRONTEND, h2=True),
        "inbound": check_gossamer(results["inbound"], haproxy, (b"/",), TESTER, h2=True),
    }
    print(_verdict(case.id, results, problems))  # the comparison, shown with -s or -rA
    assert not any(problems.values()), _verdict(case.id, results, problems)


def test_every_case_has_a_row_in_the_table() -> None:
    """OBSERVED is the comparison a reader looks up: one row per case, no stale row."""
    ids = [c.id for c in HTTP1_CASES] + [c.id for c in H2_CASES]
    assert len(ids) == len(set(ids))
    assert sorted(OBSERVED) == sorted(ids)
