"""``python -m bench.routing``: the cost of routing per request (issue 4's benchmark row).

Drives the real outbound data path (``OutboundConnection`` parsing, routing, balancing,
response framing, metrics) with in-memory transports, so only the proxy's own Python work is
timed, without syscalls or other processes. Three route tables for the same service:

- ``none``: no HTTPRoute (the default backend);
- ``100 rules, first``: 100 prefix rules, each a 90/10 weighted split over label subsets; the
  request matches the first rule;
- ``100 rules, last``: the same table; the request matches only the last rule (99 misses).

The figure of record is the added microseconds per request over ``none``, measured in
interleaved rounds; the section is written into bench/RESULTS.md between markers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gossamer.proxy.http1.outbound import OutboundConnection
from gossamer.proxy.http1.upstream import UpstreamConnection
from gossamer.proxy.process.settings import (
    ControlSettings,
    IdentitySettings,
    ListenSettings,
    ProxySettings,
    WorkloadSettings,
)
from gossamer.proxy.state import ProxyState

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- routing-cost:begin -->"
END = "<!-- routing-cost:end -->"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 200\r\n\r\n" + b"x" * 200
)


class _Transport:
    """Takes writes and discards them."""

    def write(self, data: bytes) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _rules(n: int) -> list[dict[str, Any]]:
    return [
        {
            "name": f"catalog/r{i}",
            "matches": [{"path": {"type": "Prefix", "value": f"/r{i}"}}],
            "backends": [
                {"service": "catalog.default", "subset": {"version": "v1"}, "weight": 90},
                {"service": "catalog.default", "subset": {"version": "v2"}, "weight": 10},
            ],
        }
        for i in range(n)
    ]


def _state(rules: list[dict[str, Any]]) -> ProxyState:
    settings = ProxySettings(
        workload=WorkloadSettings("frontend"),
        listen=ListenSettings(),
        control=ControlSettings(),
        identity=IdentitySettings(Path("/nonexistent")),
    )
    state = ProxyState(settings)
    service: dict[str, Any] = {
        "name": "catalog",
        "namespace": "default",
        "identity": "spiffe://gossamer.local/ns/default/sa/catalog",
        "protocol": "http",
        "endpoints": [
            {"address": "127.0.0.1", "port": 1001, "labels": {"version": "v1"}},
            {"address": "127.0.0.1", "port": 1002, "labels": {"version": "v2"}},
        ],
    }
    if rules:
        service["http_routes"] = rules
    state.apply_snapshot(
        1,
        {
            "version": 1,
            "proxy": {"service": "frontend", "namespace": "default"},
            "inbound": {"mtls": "STRICT"},
            "outbound": {"services": [service], "unknown": []},
        },
    )
    for port in (1001, 1002):  # idle upstream connections, one per endpoint
        for _ in range(2):
            upstream = UpstreamConnection(state.outbound_pool, ("127.0.0.1", port))
            upstream.connection_made(_Transport())  # type: ignore[arg-type]
            state.outbound_pool.release(upstream)
    return state


def _cycle_cost(state: ProxyState, path: bytes, requests: int) -> float:
    """Microseconds of proxy work per request/response cycle."""
    downstream = OutboundConnection(state)
    downstream.connection_made(_Transport())  # type: ignore[arg-type]
    request = b"GET %b HTTP/1.1\r\nHost: catalog\r\n\r\n" % path
    started = time.perf_counter()
    for _ in range(requests):
        downstream.data_received(request)
        upstream = downstream.queue[0].upstream if downstream.queue else None
        if upstream is None:
            raise RuntimeError("the request did not reach an upstream")
        upstream.data_received(RESPONSE)
    return (time.perf_counter() - started) / requests * 1e6


def measure(rounds: int = 5, requests: int = 20_000) -> dict[str, Any]:
    cases = {
        "none": (_state([]), b"/r99/items"),
        "100 rules, first matches": (_state(_rules(100)), b"/r0/items"),
        "100 rules, last matches": (_state(_rules(100)), b"/r99/items"),
    }
    for state, path in cases.values():
        _cycle_cost(state, path, 2_000)  # warm up
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (state, path) in cases.items():
            samples[name].append(_cycle_cost(state, path, requests))
    base = statistics.median(samples["none"])
    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        rows.append({"case": name, "us_per_request": median, "added_us": median - base})
    return {"rounds": rounds, "requests": requests, "rows": rows}


def render(result: dict[str, Any]) -> str:
    lines = [
        BEGIN,
        "## Routing cost per request (issue 4)",
        "",
        "The outbound data path driven with in-memory transports (`python -m bench.routing`):",
        "the proxy's own Python work per request, median of "
        f"{result['rounds']} interleaved rounds of {result['requests']} requests. Each rule",
        "is a prefix match with a 90/10 weighted split over label subsets.",
        "",
        "| route table | us/request | added by routing |",
        "|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['case']} | {row['us_per_request']:.2f} | {row['added_us']:+.2f} us |"
        )
    lines += ["", END]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Put ``section`` in place of the one between its own markers (its first line is
    ``<!-- NAME:begin -->``, its last ``<!-- NAME:end -->``), or append it."""
    begin = section.split("\n", 1)[0]
    end = begin.replace(":begin -->", ":end -->")
    text = path.read_text() if path.exists() else ""
    if begin.endswith(":begin -->") and begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def median_row(case: str, values: list[float]) -> dict[str, Any]:
    """A cost table's row: the median of the rounds, and half their range."""
    return {"case": case, "us_per_request": statistics.median(values),
            "spread_us": (max(values) - min(values)) / 2}  # fmt: skip


def cost_lines(rows: list[dict[str, Any]]) -> list[str]:
    """``| case | median ± spread |`` for each row of a cost table."""
    return [f"| {row['case']} | {row['us_per_request']:.2f} ± {row['spread_us']:.2f} |"
            for row in rows]  # fmt: skip


def compiled_section_main(
    argv: Sequence[str] | None,
    prog: str,
    doc: str | None,
    measure: Callable[[int, int], dict[str, Any]],
    render: Callable[[dict[str, Any], str], str],
    rounds: int,
) -> int:
    """``section_main`` for a section that names the build it measured (``code=...``)."""
    from gossamer import compiled

    def render_here(result: dict[str, Any]) -> str:
        return render(result, f"code={compiled.STATE}")

    return section_main(argv, prog, doc, measure, render_here, rounds=rounds)


def section_main(
    argv: Sequence[str] | None,
    prog: str,
    doc: str | None,
    measure: Callable[[int, int], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    rounds: int,
) -> int:
    """Measure, print the section, and write it into bench/RESULTS.md (a bench module's main)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    section = render(measure(args.rounds, args.requests))
    print(section)
    if not args.no_write:
        write_section(args.output, section)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return section_main(argv, "python -m bench.routing", __doc__, measure, render, rounds=5)


if __name__ == "__main__":
    sys.exit(main())
