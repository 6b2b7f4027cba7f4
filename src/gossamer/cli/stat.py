"""``gossamer stat`` and ``gossamer edges``: the mesh's golden metrics now, from the sidecars.

Both read the connected proxies from the control plane (``/v1/proxies``), scrape every
sidecar's ``/metrics`` on its admin address twice, ``--window`` seconds apart, and work on what
changed in between (so the figures are about now, not about the sidecars' lifetime):

- ``stat``: per service, from its sidecars' inbound requests: success rate (answers that are
  not 5xx), requests per second, and p50/p95/p99 latency (interpolated in the histogram
  buckets, as Prometheus' ``histogram_quantile`` does);
- ``edges``: who calls whom, from the callers' outbound requests: the caller, the destination,
  the identity the destination proved (``none``: no mTLS on that edge), success, rps and p99.

A sidecar that does not answer is left out and named on stderr.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Annotated, Any

import httpx
import typer

from gossamer.cli.common import ControlUrlOption, DataDirOption, connect, expected_errors
from gossamer.cli.output import Format, error, print_data, print_table

__all__ = ["edges", "register", "stat"]

SCRAPE_TIMEOUT = 2.0
_SAMPLE = re.compile(r'^(gossamer_requests_total|gossamer_request_duration_seconds_bucket)'
                     r'\{(.*)\} (\S+)$')  # fmt: skip
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Key = tuple[str, ...]
Counts = dict[Key, float]


def _samples(text: str) -> tuple[Counts, Counts]:
    """Requests by (direction, src, dst, peer, code), and histogram buckets by
    (direction, src, dst, peer, le), from one exposition."""
    requests: Counts = {}
    buckets: Counts = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match.group(2)))
        base = (labels.get("direction", ""), labels.get("src_service", ""),
                labels.get("dst_service", ""), labels.get("peer_identity", ""))  # fmt: skip
        code = labels.get("code", "")
        key: Key
        if match.group(1) == "gossamer_requests_total":
            counts, key = requests, (*base, code)
        else:
            counts, key = buckets, (*base, code, labels.get("le", ""))
        counts[key] = counts.get(key, 0.0) + float(match.group(3))
    return requests, buckets


def _scrape(addresses: Iterable[str]) -> dict[str, str]:
    found = {}
    for address in addresses:
        try:
            answer = httpx.get(f"http://{address}/metrics", timeout=SCRAPE_TIMEOUT)
            answer.raise_for_status()
        except httpx.HTTPError as exc:
            error(f"sidecar at {address} left out: {exc}")
            continue
        found[address] = answer.text
    return found


def _delta(before: dict[str, str], after: dict[str, str]) -> tuple[Counts, Counts]:
    """What every sidecar answered in both scrapes counted in between (a sidecar that
    restarted, its counters lower, counts from zero)."""
    requests: Counts = defaultdict(float)
    buckets: Counts = defaultdict(float)
    for address, text in after.items():
        old_requests, old_buckets = _samples(before.get(address, ""))
        new_requests, new_buckets = _samples(text)
        for new, old, out in ((new_requests, old_requests, requests),
                              (new_buckets, old_buckets, buckets)):  # fmt: skip
            for key, value in new.items():
                previous = old.get(key, 0.0)
                out[key] += value - previous if value >= previous else value
    return requests, buckets


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile of cumulative ``buckets`` (upper bound -> count), interpolated
    linearly inside the bucket it falls in; None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # in the open bucket: its lower bound, as Prometheus answers
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = bound, count
    return lower


def _rows(requests: Counts, buckets: Counts, window: float, group: Any) -> dict[Key, Any]:
    """Totals per group (``group(key)`` -> group key, or None to skip a series)."""
    out: dict[Key, Any] = {}
    for key, count in requests.items():
        name = group(key)
        if name is None:
            continue
        row = out.setdefault(name, {"total": 0.0, "ok": 0.0, "buckets": defaultdict(float)})
        row["total"] += count
        if not key[4].startswith("5"):
            row["ok"] += count
    for key, count in buckets.items():
        name = group(key)
        if name is not None and name in out:
            out[name]["buckets"][float(key[5])] += count
    for row in out.values():
        total = row["total"]
        row["success"] = row["ok"] / total if total else None
        row["rps"] = total / window
        row["p50"], row["p95"], row["p99"] = (quantile(q, row["buckets"])
                                              for q in (0.5, 0.95, 0.99))  # fmt: skip
    return out


def _measure(control_url: str | None, data_dir: Any, window: float) -> tuple[Counts, Counts]:
    with expected_errors(), connect(control_url, data_dir) as client:
        proxies = client.proxies()
    addresses = sorted({str(p["admin_address"]) for p in proxies
                        if p.get("connected") and p.get("admin_address")})  # fmt: skip
    before = _scrape(addresses)
    time.sleep(window)
    return _delta(before, _scrape(before))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}ms"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


WindowOption = Annotated[float, typer.Option(help="Seconds between the two scrapes")]
OutputOption = Annotated[Format, typer.Option("--output", "-o", help="Output format")]


def stat(
    window: WindowOption = 5.0,
    output: OutputOption = Format.table,
    control_url: ControlUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Per service, now: success rate, requests per second, p50/p95/p99 latency (from its
    sidecars' inbound requests)."""
    requests, buckets = _measure(control_url, data_dir, window)
    rows = _rows(requests, buckets, window, lambda k: (k[2],) if k[0] == "inbound" else None)
    items = [{"service": name[0], "success": row["success"], "rps": row["rps"],
              "p50": row["p50"], "p95": row["p95"], "p99": row["p99"]}
             for name, row in sorted(rows.items())]  # fmt: skip
    if output is not Format.table:
        print_data({"window_seconds": window, "items": items}, output)
        return
    print_table(("SERVICE", "SUCCESS", "RPS", "P50", "P95", "P99"), [
        [i["service"], _percent(i["success"]), f"{i['rps']:.1f}", _ms(i["p50"]), _ms(i["p95"]),
         _ms(i["p99"])] for i in items])  # fmt: skip


def edges(
    window: WindowOption = 5.0,
    output: OutputOption = Format.table,
    control_url: ControlUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Who calls whom, now: the identity each destination proved (none: no mTLS), success
    rate, requests per second and p99 (from the callers' outbound requests)."""
    requests, buckets = _measure(control_url, data_dir, window)
    rows = _rows(requests, buckets, window,
                 lambda k: (k[1], k[2], k[3]) if k[0] == "outbound" else None)  # fmt: skip
    items = [{"src": name[0], "dst": name[1], "identity": name[2],
              "mtls": name[2] not in ("", "none"), "success": row["success"],
              "rps": row["rps"], "p99": row["p99"]}
             for name, row in sorted(rows.items())]  # fmt: skip
    if output is not Format.table:
        print_data({"window_seconds": window, "items": items}, output)
        return
    print_table(("SRC", "DST", "DST IDENTITY", "MTLS", "SUCCESS", "RPS", "P99"), [
        [i["src"], i["dst"], i["identity"], "yes" if i["mtls"] else "no",
         _percent(i["success"]), f"{i['rps']:.1f}", _ms(i["p99"])] for i in items])  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command()(stat)
    app.command()(edges)
