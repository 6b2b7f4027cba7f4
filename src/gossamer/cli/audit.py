"""``gossamer audit query`` and ``gossamer audit verify``: the mesh's audit log.

``query`` asks the control plane for the records a filter selects (``/v1/audit/records``).
``verify`` fetches every chain as stored (``/v1/audit/chains/{chain}``, page by page) with
the mesh's roots, current and retired, and checks it here, outside the store
(``gossamer.audit_verify``): a record deleted, edited or moved, a broken link, a checkpoint
that does not hold. It names each problem where it is, and exits 1 when there is one. A chain
the store's retention pruned is checked from its signed anchor on, and the report says
through which record and up to which signed time records were removed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from cryptography import x509

from gossamer.audit_verify import StoredCheckpoint, StoredRecord, verify_chain
from gossamer.cli.common import ControlUrlOption, DataDirOption, connect, expected_errors
from gossamer.cli.output import Format, error, print_data, print_table, say
from gossamer.local.client import ControlClient

__all__ = ["query", "register", "verify"]

PAGE = 5000
_RELATIVE = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}

OutputOption = Annotated[Format, typer.Option("--output", "-o", help="Output format")]


def _when(value: str | None, name: str) -> str | None:
    """``10m`` (that long ago) or an RFC 3339 time, as the API takes it."""
    if value is None:
        return None
    match = _RELATIVE.match(value)
    if match is not None:
        ago = timedelta(seconds=int(match.group(1)) * _UNIT[match.group(2)])
        return (datetime.now(UTC) - ago).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        error(f"--{name}: expected a duration ago (30s, 10m, 2h, 1d) or an RFC 3339 time")
        raise typer.Exit(2) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.isoformat()


def query(
    since: Annotated[str | None, typer.Option(help="From: 10m (ago) or an RFC 3339 time")] = None,
    until: Annotated[str | None, typer.Option(help="Until: 10m (ago) or an RFC 3339 time")] = None,
    service: Annotated[str | None, typer.Option(help="The called service")] = None,
    namespace: Annotated[str | None, typer.Option(help="The called service's namespace")] = None,
    caller: Annotated[str | None, typer.Option(help="The caller's SPIFFE ID")] = None,
    subject: Annotated[str | None, typer.Option(help="The end user: <iss>/<sub>")] = None,
    status: Annotated[int | None, typer.Option(help="The response status")] = None,
    method: Annotated[str | None, typer.Option(help="The request method")] = None,
    decision: Annotated[str | None, typer.Option(help="allow or deny")] = None,
    limit: Annotated[int, typer.Option(help="At most this many records")] = 1000,
    output: OutputOption = Format.table,
    control_url: ControlUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """The audit records a filter selects, oldest first."""
    params = {"since": _when(since, "since"), "until": _when(until, "until"),
              "service": service, "namespace": namespace, "caller": caller,
              "subject": subject, "status": None if status is None else str(status),
              "method": method, "decision": decision, "limit": str(limit)}  # fmt: skip
    with expected_errors(), connect(control_url, data_dir) as client:
        items = client.audit_records({k: v for k, v in params.items() if v is not None})
    if output is not Format.table:
        print_data({"items": items}, output)
        return
    print_table(("TIME", "SERVICE", "CALLER", "SUBJECT", "METHOD", "PATH", "STATUS",
                 "DECISION", "MS"), [
        [str(i.get("time")), f"{i.get('namespace')}/{i.get('service')}",
         str(i.get("caller") or "-"), str(i.get("subject") or "-"), str(i.get("method")),
         str(i.get("path")), str(i.get("status")), str(i.get("decision")),
         f"{i.get('duration_ms', 0):.1f}"] for i in items])  # fmt: skip


@dataclass
class _Stored:
    """One chain as the store holds it."""

    records: list[StoredRecord] = field(default_factory=list)
    checkpoints: list[StoredCheckpoint] = field(default_factory=list)
    anchor: StoredCheckpoint | None = None  # where retention cut the chain


def _fetch(client: ControlClient, chain: str) -> _Stored:
    stored = _Stored()
    after = 0
    while True:
        page = client.audit_chain(chain, after, PAGE)
        stored.checkpoints += [StoredCheckpoint(int(c["seq"]), str(c["entry"]))
                               for c in page["checkpoints"]]  # fmt: skip
        if (anchor := page.get("anchor")) is not None:
            stored.anchor = StoredCheckpoint(int(anchor["seq"]), str(anchor["entry"]))
        batch = [StoredRecord(int(r["seq"]), str(r["entry"])) for r in page["records"]]
        stored.records += batch
        if len(batch) < PAGE:
            return stored
        after = batch[-1].seq


def _pruned(anchor: StoredCheckpoint | None) -> dict[str, Any] | None:
    """What retention removed: through which record, signed when (None: nothing)."""
    if anchor is None:
        return None
    try:
        signed = float(json.loads(anchor.entry)["time"])
        when = datetime.fromtimestamp(signed, UTC).isoformat(timespec="seconds")
    except (ValueError, KeyError, TypeError):
        when = None  # verify_chain names the unreadable anchor
    return {"through": anchor.seq, "signed": when}


def verify(
    chain: Annotated[str | None, typer.Option(help="Only this chain")] = None,
    output: OutputOption = Format.table,
    control_url: ControlUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Check every audit chain: no record deleted, edited or moved, every checkpoint signed
    by its sidecar (exit status 1 when a problem is found)."""
    results: list[dict[str, Any]] = []
    with expected_errors(), connect(control_url, data_dir) as client:
        listing = client.audit_chains()
        roots = [cert for pem in listing["roots"]
                 for cert in x509.load_pem_x509_certificates(pem.encode())]  # fmt: skip
        for item in listing["items"]:
            if chain is not None and item["chain"] != chain:
                continue
            stored = _fetch(client, str(item["chain"]))
            problems = verify_chain(str(item["chain"]), stored.records, stored.checkpoints,
                                    roots, stored.anchor)  # fmt: skip
            results.append({**item, "checked_records": len(stored.records),
                            "checked_checkpoints": len(stored.checkpoints),
                            "pruned": _pruned(stored.anchor),
                            "problems": [{"seq": p.seq, "kind": p.kind, "detail": p.detail}
                                         for p in problems]})  # fmt: skip
    if chain is not None and not results:
        error(f"no chain {chain}")
        raise typer.Exit(1)
    _report(results, output)
    if any(r["problems"] for r in results):
        raise typer.Exit(1)


def _report(results: list[dict[str, Any]], output: Format) -> None:
    if output is not Format.table:
        print_data({"items": results}, output)
        return
    for r in results:
        state = "intact" if not r["problems"] else _count(len(r["problems"]), "problem")
        say(f"chain {r['chain']} ({r['namespace']}/{r['service']}, {r['identity']}): "
            f"{_count(r['checked_records'], 'record')}, "
            f"{_count(r['checked_checkpoints'], 'checkpoint')}: {state}")
        if r["pruned"] is not None:
            say(f"  records 1-{r['pruned']['through']} removed by retention, up to a "
                f"checkpoint signed {r['pruned']['signed']}")
        for p in r["problems"]:
            say(f"  record {p['seq']}: {p['kind']}: {p['detail']}")
    if not results:
        say("no audit records yet")


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def register(app: typer.Typer) -> None:
    audit = typer.Typer(help="The audit log: query it, verify it.", no_args_is_help=True)
    audit.command()(query)
    audit.command()(verify)
    app.add_typer(audit, name="audit")
