"""``python -m bench.stages``: what the pipeline's slots cost per request (issue 10).

Drives the real outbound HTTP/1.1 data path (``OutboundConnection``: parsing, the pipeline's
stages, balancing, response framing, metrics) with in-memory transports, as
``bench.routing`` does, so only the proxy's own Python work is timed. The same service with:

- ``no stages``: nothing configured in any slot (the default; the baseline);
- ``one empty stage``: a ``Stage`` that does nothing in the ``filter`` slot;
- ``user filter, request``: ``tests.apps.filters:Passthrough`` (the filter API's adapter:
  the request view, the call, the edit check);
- ``user filter, request+response``: ``tests.apps.filters:Tagging`` (adds a request header,
  sets a response header, counts an event: the response leaves the sliced fast path);
- ``route rule with header edits``: no slots, one HTTPRoute rule that sets a request and a
  response header (the logical stage's filters, for comparison).

Interleaved rounds; the figure of record is the added microseconds per request over
``no stages``. The section is written into bench/RESULTS.md between markers.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from typing import Any

from bench.routing import _cycle_cost, _state, compiled_section_main
from gossamer.proxy.observe.metrics import Metrics
from gossamer.proxy.pipeline.slots import Stage, Stages
from gossamer.proxy.pipeline.user_filters import compile_filters
from gossamer.proxy.state import ProxyState

BEGIN = "<!-- stage-cost:begin -->"
END = "<!-- stage-cost:end -->"
EDIT_RULE = [{
    "name": "catalog/edits",
    "matches": [{"path": {"type": "Prefix", "value": "/"}}],
    "backends": [{"service": "catalog.default", "weight": 1}],
    "filters": {"request_headers": {"set": {"x-a": "1"}, "add": {}, "remove": []},
                "response_headers": {"set": {"x-b": "2"}, "add": {}, "remove": []}},
}]  # fmt: skip


def _with_stages(stages: Stages | None, rules: list[dict[str, Any]] | None = None) -> ProxyState:
    state = _state(rules or [])
    assert state.table is not None
    state.table.outbound_stages = stages
    return state


def _user(ref: str) -> Stages:
    stages = compile_filters(
        [{"name": f"bench/{ref}", "filter": ref, "config": {}, "failure": "reject"}],
        "bench", "outbound", metrics=Metrics("frontend", "default"),
        service="frontend", namespace="default",
    )  # fmt: skip
    assert stages is not None
    return stages


def measure(rounds: int = 7, requests: int = 20_000) -> dict[str, Any]:
    cases = {
        "no stages": _with_stages(None),
        "one empty stage": _with_stages(Stages([Stage()])),
        "user filter, request": _with_stages(_user("tests.apps.filters:Passthrough")),
        "user filter, request+response": _with_stages(_user("tests.apps.filters:Tagging")),
        "route rule with header edits": _with_stages(None, EDIT_RULE),
    }
    for state in cases.values():
        _cycle_cost(state, b"/items", 2_000)  # warm up
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, state in cases.items():
            samples[name].append(_cycle_cost(state, b"/items", requests))
    base = statistics.median(samples["no stages"])
    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        spread = (max(values) - min(values)) / 2
        rows.append({"case": name, "us_per_request": median, "added_us": median - base,
                     "spread_us": spread})  # fmt: skip
    return {"rounds": rounds, "requests": requests, "rows": rows}


def render(result: dict[str, Any], code: str) -> str:
    lines = [
        BEGIN,
        "## Pipeline slots: cost per request (issue 10)",
        "",
        "The outbound HTTP/1.1 data path with in-memory transports (`python -m bench.stages`,",
        f"{code}): the proxy's own Python work per request, median of {result['rounds']}",
        f"interleaved rounds of {result['requests']} requests (± half the range of the rounds).",
        "",
        "| configuration | us/request | added |",
        "|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['case']} | {row['us_per_request']:.2f} ± {row['spread_us']:.2f} "
            f"| {row['added_us']:+.2f} us |"
        )
    lines += ["", END]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return compiled_section_main(argv, "python -m bench.stages", __doc__, measure, render,
                                 rounds=7)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
