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
- ``tap, a request it emits``: ``TapStage.on_complete`` for a request that is sampled (the
  bucket made endless: every request emitted);
- ``tap, at its cap``: the same stage as a tap session runs, at most ``MAX_RPS`` (100)
  events a second: the loop's other requests pay the match and the bucket only;
- ``everything on``: tracing at 1% (a trace that starts here), an access log, an audited
  request and a tap at its cap, together; and the same with the access-log writer's CPU
  per line added, which is the figure the target is for (<= 10 us): it is CPU the sidecar
  spends per request, though not on the request's path.

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
from gossamer.proxy.observe.access_log import AccessLog
from gossamer.proxy.observe.audit_spool import AuditSpool
from gossamer.proxy.observe.otlp import SpanExporter
from gossamer.proxy.observe.trace_context import Tracing
from gossamer.proxy.pipeline.access_log import AccessLogStage
from gossamer.proxy.pipeline.audit import AuditStage
from gossamer.proxy.pipeline.authorize import AUDIT_NOTE
from gossamer.proxy.pipeline.slots import Stage
from gossamer.proxy.pipeline.tap import MAX_RPS, TapSpec, TapStage
from gossamer.proxy.pipeline.tracing import TraceStage
from gossamer.proxy.snapshot.authorization import Decision

BEGIN = "<!-- observe-cost:begin -->"
END = "<!-- observe-cost:end -->"
DECISION = Decision(True, "default/orders-readers", "", ("default/audit-orders",))
EVERYTHING = "everything on (tracing 1%, access log, audit, a tap at its cap), request path"


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
    """Microseconds per line the writer's thread spends formatting and writing (as its
    ``_drain`` does: ``format_lines`` in batches, whole-line writes)."""
    peer = "spiffe://gossamer.local/ns/default/sa/frontend"
    entry = (time.time_ns(), "inbound", "HTTP/1.1", b"GET", b"orders", b"/items?page=2", 200,
             "", 0, 377, 1_250_000, "orders", "127.0.0.1:8081", peer, b"0a1b2c3d-1", None,
             b"bench")  # fmt: skip
    for _ in range(lines):
        log.add(entry)  # (the request path's share, timed in the access log's row)
    started = time.perf_counter()
    log._drain()
    return (time.perf_counter() - started) / lines * 1e6


def _stages(tmp: Path, requests: int) -> dict[str, list[Stage]]:
    log = AccessLog("json", "", str(tmp / "access.log"))
    spool = AuditSpool(tmp / "audit", limit=1 << 40, block=True)
    exporter = SpanExporter("http://127.0.0.1:4318", [("service.name", "orders")],
                            max_queue=10 * requests)  # fmt: skip
    every = TapSpec({"id": "bench", "max_rps": MAX_RPS, "seconds": 3600})
    every.rate = every.tokens = 1e12  # every request sampled: the cost of one that is
    capped = TapSpec({"id": "bench", "max_rps": MAX_RPS, "seconds": 3600})
    emitted: list[Any] = []

    def emit(session: str, event: dict[str, Any]) -> None:
        emitted.append(event)
        if len(emitted) > 1000:
            emitted.clear()

    access = AccessLogStage(log, "inbound", "orders", "127.0.0.1:8081")
    audit = AuditStage(spool, "default", "orders")
    trace = TraceStage("inbound", Tracing(0.01), exporter, "orders")
    tap_capped = TapStage(capped, "inbound", emit)
    return {"access log": [access], "audit": [audit],
            "tap, a request it emits": [TapStage(every, "inbound", emit)],
            f"tap, at its cap ({MAX_RPS:.0f} events/s)": [tap_capped],
            EVERYTHING: [trace, audit, access, tap_capped]}  # fmt: skip


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
             if name != EVERYTHING]  # fmt: skip
    rows.append(median_row("access log, writer per line (off the request path)", writer))
    rows.append(median_row(EVERYTHING, samples[EVERYTHING]))
    rows.append(median_row("everything on, with the writer's CPU per line (target: <= 10 us)",
                           [a + b for a, b in zip(samples[EVERYTHING], writer, strict=True)]))
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
        "<= 10 us with everything on, the access-log writer's CPU included.",
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
