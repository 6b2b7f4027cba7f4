"""``python -m bench.authorization``: what AuthorizationPolicies cost per request (issue 13).

The ``authorize`` stage (``proxy/pipeline/authorize.py``) runs once per inbound request: it
reads the caller, method, path and authority off the request and asks the compiled policies
(``proxy/snapshot/authorization.py``). This times that call on a real HTTP/1.1 ``Exchange``
(the compiled build when there is one), for policies of 100 rules:

- ``100 rules, exact principals``: one ALLOW policy, each rule naming one caller, methods and
  a path prefix; the request's caller is named by the last rule (the principal index finds it);
- ``100 rules, wildcard principals``: the same with ``*/sa/<name>`` patterns, which the index
  cannot hold: every rule is tried, the matching one last (the worst case);
- ``100 rules + DENY on a header``: the exact case plus a DENY policy with a header condition
  (the request's headers are read);
- ``no policy``: no stage at all, by construction 0 (a sidecar without policies has none).

Interleaved rounds, medians; the section is written into bench/RESULTS.md between markers.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.routing import _state, section_main
from gossamer.proxy.http1.exchange import Exchange
from gossamer.proxy.http1.outbound import OutboundConnection
from gossamer.proxy.observe.metrics import Metrics
from gossamer.proxy.pipeline.authorize import AuthorizeStage
from gossamer.proxy.snapshot.authorization import compile_authorization

BEGIN = "<!-- authorization-cost:begin -->"
END = "<!-- authorization-cost:end -->"
CALLER = "spiffe://gossamer.local/ns/default/sa/caller99"


def _rules(wildcard: bool) -> list[dict[str, Any]]:
    rules = []
    for i in range(100):
        principal = f"*/sa/caller{i}" if wildcard else f"spiffe://gossamer.local/ns/default/sa/caller{i}"
        rules.append({
            "from": [{"principals": [principal], "not_principals": [], "namespaces": [],
                      "not_namespaces": []}],
            "to": [{"methods": ["GET", "HEAD"], "not_methods": [], "paths": [f"/r{i}/*"],
                    "not_paths": [], "ports": [], "not_ports": [], "hosts": [], "not_hosts": []}],
            "when": [],
        })  # fmt: skip
    return rules


def _stage(wildcard: bool, deny_header: bool) -> AuthorizeStage:
    policies: list[dict[str, Any]] = [
        {"name": "default/callers", "action": "ALLOW", "rules": _rules(wildcard)}
    ]
    if deny_header:
        policies.append({"name": "default/suspended", "action": "DENY", "rules": [
            {"from": [], "to": [], "when": [
                {"key": "request.headers[x-tenant]", "values": ["initech"], "not_values": []}]}]})
    compiled = compile_authorization(policies, "bench")
    assert compiled is not None
    return AuthorizeStage(compiled, Metrics("orders", "default"))


def _exchange() -> Exchange:
    down = OutboundConnection(_state([]))
    ex = Exchange(time.monotonic_ns(), down)
    ex.method, ex.path, ex.authority = b"GET", b"/r99/items?page=2", b"orders"
    ex.peer = CALLER.encode()
    ex.plain = PLAIN
    return ex


PLAIN = b"\r\nHost: orders\r\nx-tenant: acme"


def _cost(stage: AuthorizeStage, ex: Exchange, requests: int) -> float:
    """Microseconds per ``on_request`` (every request allowed). A stage that reads headers
    gets them fresh each time, as each request would (the plain lines parsed on first use):
    the loop's two resets count against it."""
    on_request = stage.on_request
    fresh = stage.authorization.reads_headers
    started = time.perf_counter()
    for _ in range(requests):
        if fresh:
            ex.plain = PLAIN
            ex.headers = []
        if not on_request(ex):
            raise RuntimeError("the benchmark's request was refused")
    return (time.perf_counter() - started) / requests * 1e6


def measure(rounds: int = 7, requests: int = 20_000) -> dict[str, Any]:
    cases = {
        "100 rules, exact principals": _stage(False, False),
        "100 rules, wildcard principals": _stage(True, False),
        "100 rules + DENY on a header": _stage(False, True),
    }
    ex = _exchange()
    for stage in cases.values():
        _cost(stage, ex, 2_000)  # warm up
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, stage in cases.items():
            samples[name].append(_cost(stage, ex, requests))
    rows = [{"case": "no policy", "us_per_request": 0.0, "spread_us": 0.0}]
    for name, values in samples.items():
        rows.append({"case": name, "us_per_request": statistics.median(values),
                     "spread_us": (max(values) - min(values)) / 2})  # fmt: skip
    return {"rounds": rounds, "requests": requests, "rows": rows}


def render(result: dict[str, Any], code: str) -> str:
    lines = [
        BEGIN,
        "## Authorization: cost per request (issue 13)",
        "",
        "`python -m bench.authorization` (" + code + "): the `authorize` stage on a real",
        "HTTP/1.1 `Exchange`, median of " + str(result["rounds"]) + " interleaved rounds of "
        + str(result["requests"]) + " requests (± half the range); target <= 3 us.",
        "",
        "| policies | us/request |",
        "|---|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['case']} | {row['us_per_request']:.2f} ± {row['spread_us']:.2f} |")
    lines += ["", END]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from gossamer import compiled

    def render_here(result: dict[str, Any]) -> str:
        return render(result, f"code={compiled.STATE}")

    return section_main(argv, "python -m bench.authorization", __doc__, measure, render_here,
                        rounds=7)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
