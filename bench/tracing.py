"""``python -m bench.tracing``: what tracing costs per request (issue 14).

The ``trace`` stage (``proxy/pipeline/tracing.py``) runs on every request of a traced mesh, in
each direction: it reads the trace headers, decides, names a span and rewrites the headers;
when the request completes it appends a span to the export queue if sampled. This times
``on_request`` + ``on_complete`` on a real HTTP/1.1 ``Exchange`` (the compiled build when there
is one), with the request's headers fresh each time (as each request brings its own):

- ``tracing off``: no stage at all, by construction 0;
- ``1%, trace starts here``: no context came in; the ratio decides (almost always: not
  sampled), a ``traceparent`` is sent on;
- ``1%, caller not sampled``: a ``traceparent`` with flags 00 came in, and is followed;
- ``100%, caller sampled``: a sampled ``traceparent``, a span recorded per request;
- ``export, per sampled span``: the exporter's encoding of spans into OTLP protobuf, in
  batches of 512 (CPU the sidecar spends off the request path, between requests).

Interleaved rounds, medians; the section is written into bench/RESULTS.md between markers.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.routing import _state, compiled_section_main, cost_lines, median_row
from gossamer.protocol.scanner import new_scanner
from gossamer.proxy.http1.exchange import Exchange
from gossamer.proxy.http1.outbound import OutboundConnection
from gossamer.proxy.observe.otlp import SpanExporter, encode_request
from gossamer.proxy.observe.trace_context import Tracing
from gossamer.proxy.pipeline.tracing import TraceStage

BEGIN = "<!-- tracing-cost:begin -->"
END = "<!-- tracing-cost:end -->"
PLAIN = b"\r\nHost: orders\r\nuser-agent: bench\r\naccept: */*"
TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"


def _exchange(plain: bytes) -> Exchange:
    """A plain request's ``Exchange`` as the HTTP/1.1 codec makes it: its header lines, and
    what the scan of the whole request found for tracing (the loops reset ``plain`` to this
    same object, so the scan's findings stay valid, as for a request just read)."""
    down = OutboundConnection(_state([]))
    ex = Exchange(time.monotonic_ns(), down)
    ex.method, ex.path, ex.authority = b"GET", b"/items?page=2", b"orders"
    ex.peer = b"spiffe://gossamer.local/ns/default/sa/frontend"
    ex.request_id = b"0a1b2c3d-1"
    ex.plain = ex.scanned_plain = plain
    scanned = new_scanner().request(b"GET /items?page=2 HTTP/1.1%b\r\n\r\n" % plain, True)
    assert scanned is not None, plain
    ex.scanned_traceparent, ex.scanned_b3, ex.scanned_user_agent = scanned[6:9]
    return ex


def _cost(stage: TraceStage, ex: Exchange, plain: bytes, requests: int) -> float:
    """Microseconds per request: the stage's request and completion phases, on headers fresh
    each time (the resets are timed too; ``_loop_cost`` is what they cost alone)."""
    queue = stage.exporter._queue
    started = time.perf_counter()
    for _ in range(requests):
        ex.plain = plain
        ex.headers = []
        ex.notes = None
        stage.on_request(ex)
        ex.status = 200
        stage.on_complete(ex)
    elapsed = time.perf_counter() - started
    queue.clear()  # spans are exported off the request path (measured on their own)
    return elapsed / requests * 1e6


def _loop_cost(ex: Exchange, plain: bytes, requests: int) -> float:
    """Microseconds per request of ``_cost``'s loop and resets with no stage (each round's
    figure is taken off that round's stage figures: a codec makes each request's headers
    anew, so the resets are the bench's, not the stage's)."""
    started = time.perf_counter()
    for _ in range(requests):
        ex.plain = plain
        ex.headers = []
        ex.notes = None
        ex.status = 200
    return (time.perf_counter() - started) / requests * 1e6


def _export_cost(stage: TraceStage, ex: Exchange, plain: bytes, spans: int) -> float:
    """Microseconds per span to encode recorded spans for export, in batches of 512."""
    queue = stage.exporter._queue
    for _ in range(spans):
        ex.plain, ex.headers, ex.notes = plain, [], None
        stage.on_request(ex)
        ex.status = 200
        stage.on_complete(ex)
    recorded = list(queue)
    queue.clear()
    resource = stage.exporter.resource
    started = time.perf_counter()
    for first in range(0, len(recorded), 512):
        encode_request(resource, recorded[first:first + 512])
    return (time.perf_counter() - started) / len(recorded) * 1e6


def measure(rounds: int = 7, requests: int = 20_000) -> dict[str, Any]:
    """Inside an event loop, as in the sidecar (the exporter's task is made on the first span
    and never runs here: the rounds do not yield)."""

    async def inside() -> dict[str, Any]:
        return _measure(rounds, requests)

    return asyncio.run(inside())


def _measure(rounds: int, requests: int) -> dict[str, Any]:
    exporter = SpanExporter("http://127.0.0.1:4318", [("service.name", "orders")],
                            max_queue=10 * requests)  # fmt: skip
    one, every = Tracing(0.01), Tracing(1.0)
    parent = b"\r\ntraceparent: 00-%s-00f067aa0ba902b7-%s"
    cases: dict[str, tuple[TraceStage, bytes]] = {
        "1%, trace starts here": (TraceStage("inbound", one, exporter, "orders"), PLAIN),
        "1%, caller not sampled": (TraceStage("inbound", one, exporter, "orders"),
                                   PLAIN + parent % (TRACE, b"00")),
        "100%, caller sampled": (TraceStage("inbound", every, exporter, "orders"),
                                 PLAIN + parent % (TRACE, b"01")),
    }  # fmt: skip
    exchanges = {name: _exchange(plain) for name, (_, plain) in cases.items()}
    for name, (stage, plain) in cases.items():
        _cost(stage, exchanges[name], plain, 2_000)  # warm up
    samples: dict[str, list[float]] = {name: [] for name in cases}
    exports: list[float] = []
    sampled_stage, sampled_plain = cases["100%, caller sampled"]
    loops: list[float] = []
    for _ in range(rounds):
        loop = _loop_cost(_exchange(PLAIN), PLAIN, requests)
        loops.append(loop)
        for name, (stage, plain) in cases.items():
            samples[name].append(_cost(stage, exchanges[name], plain, requests) - loop)
        exports.append(_export_cost(sampled_stage, _exchange(sampled_plain), sampled_plain,
                                    min(requests, 5_120)))  # fmt: skip
    samples["export, per sampled span"] = exports
    rows = [median_row("tracing off", [0.0])]
    rows += [median_row(name, values) for name, values in samples.items()]
    rows.append(median_row("(the loop's resets, taken off the rows above)", loops))
    return {"rounds": rounds, "requests": requests, "rows": rows}


def render(result: dict[str, Any], code: str) -> str:
    lines = [
        BEGIN,
        "## Tracing: cost per request (issue 14)",
        "",
        "`python -m bench.tracing` (" + code + "): the `trace` stage's request and completion",
        "phases on a real HTTP/1.1 `Exchange`, one direction, median of "
        + str(result["rounds"]) + " interleaved rounds of " + str(result["requests"]),
        "requests (± half the range), the loop's own cost taken off (last row); target: <= 1 us",
        "with tracing at 1% and logs off.",
        "",
        "| case | us/request |",
        "|---|---|",
    ]
    lines += [*cost_lines(result["rows"]), "", END]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return compiled_section_main(argv, "python -m bench.tracing", __doc__, measure, render,
                                 rounds=7)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
