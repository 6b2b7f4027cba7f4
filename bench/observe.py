"""``python -m bench.observe``: what access logs, the audit log and a live tap cost per request
(issue 14), and everything on at once.

Each observer runs in the ``observe`` slot when its config asks for it (none of them: no stage
at all, so 0 by construction). This times the stages' phases on a real HTTP/1.1 ``Exchange``
(the compiled build when there is one), one direction:

- ``access log``: ``AccessLogStage.on_complete`` (the raw values queued for the writer);
- ``access log, writer per line``: the writer's formatting and writing of a JSON line to a
  real file, on its own thread (CPU off the request path);
- ``audit``: ``AuditStage`` on an audited request: the record sealed (canonical JSON,
  SHA-256 link) and written with ``write(2)`` to a spool on the real disk (its ``fsync``, by
  the flusher thread, is not counted: it waits on the disk, not the CPU);
- ``tap, while tapped``: ``TapStage.on_complete`` for a request that is sampled;
- ``everything on``: tracing at 1% (a trace that starts here), an access log, an audited
  request and a tap, together (target: <= 10 us).

Interleaved rounds, medians; the section is written into bench/RESULTS.md between markers.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.routing import compiled_section_main, cost_lines, median_row
from bench.tracing import PLAIN, _exchange
from gossamer.proxy.http1.exchange import Exchange
from gossamer.proxy.observe.access_log import AccessLog, format_line
from gossamer.proxy.observe.audit_spool import AuditSpool
from gossamer.proxy.observe.otlp import SpanExporter
from gossamer.proxy.observe.trace_context import Tracing
from gossamer.proxy.pipeline.access_log import AccessLogStage
from gossamer.proxy.pipeline.audit import AuditStage
from gossamer.proxy.pipeline.authorize import AUDIT_NOTE
from gossamer.proxy.pipeline.slots import Stage
from gossamer.proxy.pipeline.tap import TapSpec, TapStage
from gossamer.proxy.pipeline.tracing import TraceStage
from gossamer.proxy.snapshot.authorization import Decision

BEGIN = "<!-- observe-cost:begin -->"
END = "<!-- observe-cost:end -->"
DECISION = Decision(True, "default/orders-readers", "", ("default/audit-orders",))


def _cost(stages: list[Stage], ex: Exchange, requests: int) -> float:
    """Microseconds per request: every stage's request and completion phases, on a fresh
    request each time (with no stage: the loop's own cost, taken off the others)."""
    started = time.perf_counter()
    for _ in range(requests):
        ex.plain, ex.headers, ex.notes = PLAIN, [], {AUDIT_NOTE: DECISION}
        for stage in stages:
            stage.on_request(ex)
        ex.status, ex.response_bytes = 200, 377
        for stage in stages:
            stage.on_complete(ex)
    return (time.perf_counter() - started) / requests * 1e6


def _writer_cost(log: AccessLog, lines: int) -> float:
    """Microseconds per line the writer's thread spends formatting and writing."""
    peer = "spiffe://gossamer.local/ns/default/sa/frontend"
    entry = (time.time_ns(), "inbound", "HTTP/1.1", b"GET", b"orders", b"/items?page=2", 200,
             "", 0, 377, 1_250_000, "orders", "127.0.0.1:8081", peer, b"0a1b2c3d-1", None,
             b"bench")  # fmt: skip
    started = time.perf_counter()
    chunk = b"".join(format_line(entry, "json", "") for _ in range(lines))
    log._write(chunk, lines)
    return (time.perf_counter() - started) / lines * 1e6


def _stages(tmp: Path, requests: int) -> dict[str, list[Stage]]:
    log = AccessLog("json", "", str(tmp / "access.log"))
    spool = AuditSpool(tmp / "audit", limit=1 << 40, block=True)
    exporter = SpanExporter("http://127.0.0.1:4318", [("service.name", "orders")],
                            max_queue=10 * requests)  # fmt: skip
    tap = TapSpec({"id": "bench", "max_rps": 100, "seconds": 3600})
    tap.rate = tap.tokens = 1e12  # every request sampled: the cost of one that is
    emitted: list[Any] = []

    def emit(session: str, event: dict[str, Any]) -> None:
        emitted.append(event)
        if len(emitted) > 1000:
            emitted.clear()

    access = AccessLogStage(log, "inbound", "orders", "127.0.0.1:8081")
    audit = AuditStage(spool, "default", "orders")
    tapped = TapStage(tap, "inbound", emit)
    trace = TraceStage("inbound", Tracing(0.01), exporter, "orders")
    return {"access log": [access], "audit": [audit], "tap, while tapped": [tapped],
            "everything on": [trace, audit, access, tapped]}  # fmt: skip


def measure(rounds: int = 7, requests: int = 20_000) -> dict[str, Any]:
    async def inside() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="bench-observe-") as tmp:
            return _measure(Path(tmp), rounds, requests)

    return asyncio.run(inside())


def _measure(tmp: Path, rounds: int, requests: int) -> dict[str, Any]:
    cases = _stages(tmp, requests)
    log = next(s for s in cases["access log"] if isinstance(s, AccessLogStage)).log
    log._stop.set()  # the writer's thread is timed on its own below
    log._writer.join()
    exchanges = {name: _exchange(PLAIN) for name in cases}
    for name, stages in cases.items():
        _cost(stages, exchanges[name], 2_000)  # warm up
    samples: dict[str, list[float]] = {name: [] for name in cases}
    writer: list[float] = []
    loops: list[float] = []
    for _ in range(rounds):
        loop = _cost([], _exchange(PLAIN), requests)
        loops.append(loop)
        for name, stages in cases.items():
            samples[name].append(_cost(stages, exchanges[name], requests) - loop)
            log._queue.clear()
        writer.append(_writer_cost(log, min(requests, 10_000)))
    rows = [median_row("none of them", [0.0])]
    rows += [median_row(name, values) for name, values in samples.items()
             if name != "everything on"]  # fmt: skip
    rows.append(median_row("access log, writer per line (off the request path)", writer))
    rows.append(median_row("everything on (tracing 1%, access log, audit, tap)",
                           samples["everything on"]))  # fmt: skip
    rows.append(median_row("(the loop's resets, taken off the rows above)", loops))
    return {"rounds": rounds, "requests": requests, "rows": rows}


def render(result: dict[str, Any], code: str) -> str:
    lines = [
        BEGIN,
        "## Access logs, audit, tap: cost per request (issue 14)",
        "",
        "`python -m bench.observe` (" + code + "): the observers' phases on a real HTTP/1.1",
        "`Exchange`, one direction, median of " + str(result["rounds"]) + " interleaved rounds of "
        + str(result["requests"]) + " requests (± half the range), the loop's own cost taken off",
        "(last row); the audit spool and the access log write to the real disk. Target:",
        "<= 10 us with everything on.",
        "",
        "| case | us/request |",
        "|---|---|",
    ]
    lines += [*cost_lines(result["rows"]), "", END]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return compiled_section_main(argv, "python -m bench.observe", __doc__, measure, render,
                                 rounds=7)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
