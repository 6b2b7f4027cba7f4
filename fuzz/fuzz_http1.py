"""Fuzz target ``http1``: the HTTP/1.1 plain scanners and the request head parser path.

Owns ``gossamer.protocol.scanner`` (``NativeScanner``: ``native/scan.c``; ``PythonScanner``:
llhttp plus ``gossamer.protocol.plain``), ``gossamer.protocol.http1`` (header scan, absolute
targets) and the parsing half of ``gossamer.proxy.http1.downstream`` as the outbound and
inbound connections run it (``data_received`` → llhttp callbacks → ``request_head`` /
``plain_head``), on a fake transport, with ``dispatch`` recording the request instead of
routing it.

Each input is one read from a downstream connection. A crash is:

- any exception out of a scanner or out of ``data_received``;
- the differential oracle: a message the native scanner takes (request or response, with
  and without ``want_host``) that the Python scanner does not take with exactly the same
  pieces (``scan.c`` accepts a strict subset of what llhttp accepts);
- a request either scanner takes that the full parser path refuses, or sees differently
  (method, target, authority, request id, keep-alive, forwarded header lines), or answers
  differently on the plain path than on the full one;
- the full parser answering ``500 proxy-internal-error``: an exception in its callbacks other
  than the documented ``ProxyError`` (llhttp's own ``HttpParserError`` becomes 400/505).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fuzz.engine import FuzzFinding, fuzz, instrumented

with instrumented("gossamer.protocol", "gossamer.proxy.http1"):
    from gossamer.protocol import scanner
    from gossamer.protocol.plain import header_pairs
    from gossamer.protocol.scanner import NativeScanner, PythonScanner
    from gossamer.proxy.http1.downstream import DownstreamConnection
    from gossamer.proxy.http1.exchange import Exchange
    from gossamer.proxy.http1.inbound import InboundConnection
    from gossamer.proxy.http1.outbound import OutboundConnection
    from gossamer.proxy.process.settings import (
        ControlSettings,
        IdentitySettings,
        ListenSettings,
        ProxySettings,
        WorkloadSettings,
    )
    from gossamer.proxy.state import ProxyState

__all__ = ["one_input"]

if scanner.HOW == "python":
    raise SystemExit(
        "the native scanner is not built (make native): the differential oracle needs it"
    )

REQUEST_ID = b"fuzz-request-id"


class Transport(asyncio.Transport):
    """Takes what the connection writes; records closing."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Outcome:
    """What one connection made of the bytes: the requests dispatched, the refusal if any."""

    __slots__ = ("dispatched", "refused")

    def __init__(self) -> None:
        self.dispatched: list[Exchange] = []
        self.refused: tuple[int, str, str] | None = None


def _refuse(outcome: Outcome, status: int, cause: str, detail: str) -> None:
    if status == 500:
        # Called from data_received's handler: the chained traceback shows the cause.
        raise FuzzFinding(f"the request parser failed inside: {cause} {detail}")
    if outcome.refused is None:
        outcome.refused = (status, cause, detail)


def _scanner(plain: str) -> NativeScanner | PythonScanner | None:
    return NativeScanner() if plain == "native" else PythonScanner() if plain else None


class _Recording(DownstreamConnection):
    """A connection that records what it dispatches and refuses instead of forwarding, with
    the plain path on the scanner named (``""``: off). Mixed in before the real class."""

    outcome: Outcome

    def __init__(self, proxy: ProxyState, plain: str) -> None:
        super().__init__(proxy)
        self.outcome = Outcome()
        self.scanner = _scanner(plain)

    def plain_request(self, data: bytes) -> bool:
        return self.scanner is not None and super().plain_request(data)

    def dispatch(self, ex: Exchange) -> None:
        self.outcome.dispatched.append(ex)

    def refuse(self, status: int, cause: str, detail: str) -> None:
        _refuse(self.outcome, status, cause, detail)
        super().refuse(status, cause, detail)


class Outbound(_Recording, OutboundConnection):
    sniffed = None  # no HTTP/2 detection: that is the h2 target's


class Inbound(_Recording, InboundConnection):
    pass


def _proxy() -> ProxyState:
    settings = ProxySettings(
        workload=WorkloadSettings(service="frontend"),
        listen=ListenSettings(),
        control=ControlSettings(),
        identity=IdentitySettings(workdir=Path("/nonexistent/gossamer-fuzz")),
    )
    proxy = ProxyState(settings)
    proxy.new_request_id = lambda: REQUEST_ID  # the same on both paths, to compare them
    return proxy


PROXY = _proxy()


def _run(kind: type[Outbound | Inbound], data: bytes, plain: str, cut: int) -> Outcome:
    """One connection fed ``data`` (in two reads when ``cut`` falls inside it)."""
    conn = kind(PROXY, plain)
    transport = Transport()
    conn.connection_made(transport)
    try:
        if 0 < cut < len(data):
            conn.data_received(data[:cut])
            conn.data_received(data[cut:])
        else:
            conn.data_received(data)
        return conn.outcome
    finally:
        conn.connection_lost(None)


def _seen(ex: Exchange) -> tuple[object, ...]:
    """What the pipeline sees of a request, the same whichever path parsed it."""
    if ex.plain:  # the plain path: header lines as forwarded
        headers = header_pairs(ex.plain)
    elif ex.head:  # inbound, full path or plain: the rendered head
        headers = header_pairs(ex.head.split(b"\r\n", 1)[1])
    else:
        headers = list(ex.headers)
    return (
        ex.method,
        ex.target,
        ex.path,
        ex.authority,
        ex.request_id,
        ex.keep_alive,
        sorted((name.lower(), value) for name, value in headers),
    )


def _compare_scanners(data: bytes) -> bool:
    """The differential oracle; whether either scanner took ``data`` as a request."""
    taken = False
    for want_host in (True, False):
        native = NativeScanner().request(data, want_host)
        python = PythonScanner().request(data, want_host)
        if native is not None and native != python:
            raise FuzzFinding(
                f"request scanners differ (want_host={want_host}):\n"
                f"  native {native!r}\n  python {python!r}"
            )
        taken = taken or native is not None or python is not None
    native_response = NativeScanner().response(data)
    if native_response is not None:
        python_response = PythonScanner().response(data)
        if native_response != python_response:
            raise FuzzFinding(
                f"response scanners differ:\n  native {native_response!r}\n"
                f"  python {python_response!r}"
            )
    return taken


def _summary(outcome: Outcome) -> tuple[tuple[int, str, str] | None, list[tuple[object, ...]]]:
    return outcome.refused, [_seen(ex) for ex in outcome.dispatched]


def one_input(data: bytes) -> None:
    taken = _compare_scanners(data)
    cut = len(data) * 7 // 13  # a second read somewhere inside the message
    for kind in (Outbound, Inbound):
        full = _run(kind, data, "", 0)
        split = _run(kind, data, "", cut)
        # The same requests and the same refusal; except that a request is dispatched only
        # once the bytes read with it parsed cleanly, so two reads may dispatch one more
        # request (the one before a malformed one), never a different one.
        whole_seen, split_seen = _summary(full)[1], _summary(split)[1]
        if (
            split.refused != full.refused
            or split_seen[: len(whole_seen)] != whole_seen
            or (full.refused is None and split_seen != whole_seen)
        ):
            raise FuzzFinding(
                f"{kind.__name__}: two reads (cut at {cut}) parse differently "
                f"from one:\n  two {_summary(split)!r}\n  one {_summary(full)!r}"
            )
        if not taken:
            continue
        # A message a scanner takes is one whole valid request: the full parser takes it
        # alike (a refusal, e.g. no Host on the outbound side, must be the same refusal).
        for how in ("native", "python"):
            plain = _run(kind, data, how, 0)
            if _summary(plain) != _summary(full):
                raise FuzzFinding(
                    f"{kind.__name__}: the plain path ({how} scanner) and the "
                    f"full path see different requests:\n"
                    f"  plain {_summary(plain)!r}\n  full  {_summary(full)!r}"
                )


if __name__ == "__main__":
    fuzz(one_input)
