"""``gossamer revoke``: cut a proxy, or every proxy of a service, out of the mesh at once.

A revoked certificate is refused by the control plane (no hello, no renewal) and by every
sidecar (as a caller and as an upstream) until it expires (docs/internals.md §11).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from gossamer.cli.common import (
    ControlUrlOption,
    DataDirOption,
    NamespaceOption,
    connect,
    expected_errors,
)
from gossamer.cli.output import Format, error, print_data, print_table, say
from gossamer.local.client import NotFound

__all__ = ["register", "revoke"]

_TARGETS = ("proxy", "service", "list")


def _when(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def revoke(
    target: Annotated[str, typer.Argument(help="proxy, service, or list")],
    name: Annotated[str | None, typer.Argument(help="Proxy ID or service name")] = None,
    namespace: NamespaceOption = None,
    reason: Annotated[str, typer.Option(help="Why (kept with the revocation)")] = (
        "revoked by the operator"
    ),
    output: Annotated[Format, typer.Option("--output", "-o", help="Output format")] = Format.table,
    control_url: ControlUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Revoke a proxy (`revoke proxy ID`) or a service's identity (`revoke service NAME`);
    `revoke list` shows what is revoked."""
    if target not in _TARGETS or (target != "list" and name is None):
        error("usage: gossamer revoke proxy PROXY_ID | service NAME [-n NS] | list")
        raise typer.Exit(2)
    with expected_errors(), connect(control_url, data_dir) as client:
        if target == "list":
            items = client.revocations()
            if output is not Format.table:
                print_data({"items": items}, output)
            elif not items:
                say("no certificate is revoked", err=True)
            else:
                print_table(("SERIAL", "IDENTITY", "PROXY ID", "EXPIRES", "REVOKED", "REASON"), [
                    [str(i.get("serial")), str(i.get("identity")), str(i.get("proxy_id") or "-"),
                     _when(i.get("not_after")), _when(i.get("revoked_at")), str(i.get("reason"))]
                    for i in items])
            return
        try:
            if target == "proxy":
                answer = client.revoke(reason=reason, proxy_id=name)
            else:
                answer = client.revoke(reason=reason, service=name,
                                       namespace=namespace or "default")
        except NotFound:
            error(f"no proxy {name!r} is known to the control plane")
            raise typer.Exit(1) from None
    serials = answer.get("revoked") or []
    say(f"{answer.get('target')}: {len(serials)} certificate(s) revoked")


def register(app: typer.Typer) -> None:
    app.command()(revoke)
