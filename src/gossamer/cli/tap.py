"""``gossamer tap`` and ``gossamer top``: a service's requests, live.

Both ask the control plane for a tap (``GET /v1/tap/{namespace}/{service}``, with the admin
token): every connected sidecar of the service reports the requests it handles, both
directions, sampled to at most ``--max-rps`` a second each, for ``--seconds``.

- ``tap`` prints each request as it comes: when, which sidecar, the direction, method and
  path, status (and the proxy's own error cause), latency and the peer's SPIFFE ID
  (``-o json``: one JSON object per line);
- ``top`` gathers them by direction, peer, method and path: how many, the success rate, the
  best, worst and last latency; redrawn every second on a terminal, printed once at the end
  otherwise (``-o json``: the rows).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

import typer

from gossamer.cli.common import ControlUrlOption, DataDirOption, connect, expected_errors
from gossamer.cli.output import Format, print_data, print_table, say

__all__ = ["register", "tap", "top"]

NamespaceOption = Annotated[str, typer.Option("--namespace", "-n", help="The service's namespace")]
RateOption = Annotated[int, typer.Option(help="Requests a second per sidecar, at most (1-100)")]
SecondsOption = Annotated[int, typer.Option(help="How long to tap (1-600)")]
MethodOption = Annotated[str | None, typer.Option(help="Only requests with this method")]
PathOption = Annotated[str | None, typer.Option(help="Only paths starting with this")]
OutputOption = Annotated[Format, typer.Option("--output", "-o", help="Output format")]


def _events(
    service: str, namespace: str, max_rps: int, seconds: int, method: str | None,
    path: str | None, control_url: str | None, data_dir: Any,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    params = {"max_rps": str(max_rps), "seconds": str(seconds)}
    if method:
        params["method"] = method
    if path:
        params["path"] = path
    with expected_errors(), connect(control_url, data_dir) as client:
        yield from client.tap(namespace, service, params, float(seconds))


def _line(event: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(float(event.get("time", 0))).strftime("%H:%M:%S.%f")[:-3]
    status = str(event.get("status"))
    if event.get("error"):
        status += f" {event['error']}"
    peer = event.get("peer") or "-"
    arrow = "from" if event.get("direction") == "inbound" else "to"
    return (f"{when}  {event.get('proxy_id')}  {event.get('direction', ''):<8}  "
            f"{event.get('method')} {event.get('path')}  {status}  "
            f"{event.get('duration_ms', 0):.1f}ms  {arrow} {peer}")  # fmt: skip


def tap(
    service: Annotated[str, typer.Argument(help="The service whose sidecars to tap")],
    namespace: NamespaceOption = "default",
    max_rps: RateOption = 10,
    seconds: SecondsOption = 30,
    method: MethodOption = None,
    path: PathOption = None,
    output: OutputOption = Format.table,
    control_url: ControlUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """The requests a service's sidecars handle, live (sampled, rate-limited)."""
    for event in _events(service, namespace, max_rps, seconds, method, path, control_url,
                         data_dir):  # fmt: skip
        kind = event.get("type")
        if output is not Format.table:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
        elif kind == "started":
            say(f"tapping {len(event.get('proxies', []))} sidecar(s) of {namespace}/{service} "
                f"for {seconds} s, at most {max_rps} requests/s each")  # fmt: skip
        elif kind == "request":
            say(_line(event))
        elif kind == "joined":
            say(f"{event.get('proxy_id')} connected: tapped from now on")
        elif kind == "end" and event.get("dropped"):
            say(f"{event['dropped']} request(s) not shown (the tap could not keep up)")


class _Row:
    __slots__ = ("best", "count", "last", "ok", "worst")

    def __init__(self) -> None:
        self.count = self.ok = 0
        self.best = float("inf")
        self.worst = self.last = 0.0

    def add(self, event: dict[str, Any]) -> None:
        latency = float(event.get("duration_ms", 0.0))
        status = int(event.get("status") or 0)
        self.count += 1
        self.ok += 1 if 0 < status < 500 and not event.get("error") else 0
        self.best, self.worst = min(self.best, latency), max(self.worst, latency)
        self.last = latency


def _rows(rows: dict[tuple[str, str, str, str], _Row]) -> list[dict[str, Any]]:
    ordered = sorted(rows.items(), key=lambda item: (-item[1].count, item[0]))
    return [{"direction": k[0], "peer": k[1], "method": k[2], "path": k[3], "count": r.count,
             "success": r.ok / r.count, "best_ms": r.best, "worst_ms": r.worst,
             "last_ms": r.last} for k, r in ordered]  # fmt: skip


def _show(rows: dict[tuple[str, str, str, str], _Row], clear: bool) -> None:
    if clear:
        sys.stdout.write("\x1b[H\x1b[2J")
    print_table(("DIRECTION", "PEER", "METHOD", "PATH", "COUNT", "SUCCESS", "BEST", "WORST",
                 "LAST"), [
        [r["direction"], r["peer"] or "-", r["method"], r["path"], str(r["count"]),
         f"{r['success'] * 100:.1f}%", f"{r['best_ms']:.1f}ms", f"{r['worst_ms']:.1f}ms",
         f"{r['last_ms']:.1f}ms"] for r in _rows(rows)])  # fmt: skip


def top(
    service: Annotated[str, typer.Argument(help="The service whose sidecars to tap")],
    namespace: NamespaceOption = "default",
    max_rps: RateOption = 100,
    seconds: SecondsOption = 10,
    method: MethodOption = None,
    path: PathOption = None,
    output: OutputOption = Format.table,
    control_url: ControlUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """A service's requests, gathered by direction, peer, method and path (from a tap)."""
    rows: dict[tuple[str, str, str, str], _Row] = {}
    live = output is Format.table and sys.stdout.isatty()
    shown = time.monotonic()
    for event in _events(service, namespace, max_rps, seconds, method, path, control_url,
                         data_dir):  # fmt: skip
        if event.get("type") == "request":
            where = str(event.get("path", "")).partition("?")[0]
            key = (str(event.get("direction")), str(event.get("peer") or ""),
                   str(event.get("method")), where)  # fmt: skip
            rows.setdefault(key, _Row()).add(event)
        if live and time.monotonic() - shown >= 1.0:
            _show(rows, clear=True)
            shown = time.monotonic()
    if output is not Format.table:
        print_data({"seconds": seconds, "items": _rows(rows)}, output)
    else:
        _show(rows, clear=live)


def register(app: typer.Typer) -> None:
    app.command()(tap)
    app.command()(top)
