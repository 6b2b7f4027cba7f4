"""``gossamer revoke`` and ``gossamer certs``: the mesh's certificates.

``revoke`` cuts a proxy, or every proxy of a service, out of the mesh at once: a revoked
certificate is refused by the control plane (no hello, no renewal) and by every sidecar (as a
caller and as an upstream) until it expires (docs/internals.md §11).

``certs status`` shows the roots in the trust bundle every sidecar holds (subject, serial,
expiry) and every proxy's certificate expiry, and warns, long before it happens, of a root
that expires within ``ROOT_WARNING`` and of a connected proxy whose certificate has expired
(renewal failing); during a root rotation, its phase and the proxies it waits for.

``certs rotate`` replaces the built-in root with a new one (``control/rotation.py``): the new
root enters every bundle, every leaf is issued again under it, the old root leaves. It follows
the phases until the rotation is over (or ``--timeout``; the rotation goes on regardless).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

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

__all__ = ["ROOT_WARNING", "register", "revoke", "rotate", "status"]

ROOT_WARNING = timedelta(days=90)  # a root expiring sooner is warned about

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


def _roots(bundle: bytes) -> list[dict[str, Any]]:
    """Each certificate of a PEM bundle: subject, serial, expiry."""
    from cryptography import x509  # here: the CLI's other commands never load it
    from cryptography.x509.oid import NameOID

    roots = []
    for cert in x509.load_pem_x509_certificates(bundle):
        roots.append({
            "subject": cert.subject.rfc4514_string({NameOID.SERIAL_NUMBER: "serialNumber"}),
            "serial": format(cert.serial_number, "X"),
            "not_after": cert.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
            "expires_in_days": (cert.not_valid_after_utc - datetime.now(UTC)).days,
        })  # fmt: skip
    return roots


def _expiry(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _warnings(roots: list[dict[str, Any]], proxies: list[dict[str, Any]],
              issuer: dict[str, Any] | None = None) -> list[str]:  # fmt: skip
    now = datetime.now(UTC)
    found = [
        f"root {r['subject']} (serial {r['serial']}) expires on {r['not_after']}, in "
        f"{r['expires_in_days']} days: every certificate of the mesh chains to it"
        for r in roots if r["expires_in_days"] < ROOT_WARNING.days
    ]  # fmt: skip
    if issuer and issuer.get("intermediate") and isinstance(issuer.get("not_after"), int):
        left = datetime.fromtimestamp(issuer["not_after"], UTC) - now
        if left < ROOT_WARNING:
            found.append(f"the mesh's intermediate {issuer.get('subject')} expires on "
                         f"{_when(issuer['not_after'])}, in {left.days} days: rotate onto a "
                         "new one (gossamer certs rotate --ca-cert ...)")  # fmt: skip
    for proxy in proxies:
        expiry = _expiry(proxy.get("cert_expiry"))
        if proxy.get("connected") and expiry is not None and expiry <= now:
            found.append(f"proxy {proxy.get('proxy_id')} ({proxy.get('identity')}): its "
                         f"certificate expired at {proxy.get('cert_expiry')}; renewal is "
                         "failing")  # fmt: skip
    return found


def status(
    output: Annotated[Format, typer.Option("--output", "-o", help="Output format")] = Format.table,
    control_url: ControlUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """The roots every sidecar trusts and every proxy's certificate, with warnings."""
    with expected_errors(), connect(control_url, data_dir) as client:
        roots = _roots(client.trust_bundle())
        proxies = client.proxies()
        rotation = client.root_rotation()
    issuer = rotation.get("issuer")
    warnings = _warnings(roots, proxies, issuer)
    if output is not Format.table:
        print_data({"roots": roots, "proxies": [
            {k: p.get(k) for k in ("proxy_id", "service", "namespace", "identity",
                                    "cert_expiry", "connected", "signed_by")} for p in proxies],
            "rotation": rotation, "warnings": warnings}, output)  # fmt: skip
        return
    if rotation.get("phase") is not None:
        say(_progress(rotation))
        say("")
    if isinstance(issuer, dict) and issuer.get("intermediate"):
        say(f"issuer (intermediate): {issuer.get('subject')}, serial {issuer.get('serial')}, "
            f"expires {_when(issuer.get('not_after'))}")  # fmt: skip
    print_table(("ROOT", "SERIAL", "EXPIRES", "DAYS LEFT"),
                [[r["subject"], r["serial"], r["not_after"], str(r["expires_in_days"])]
                 for r in roots])  # fmt: skip
    say("")
    print_table(("PROXY ID", "IDENTITY", "CERT EXPIRES", "CONNECTED"),
                [[str(p.get("proxy_id")), str(p.get("identity")), str(p.get("cert_expiry") or "-"),
                  str(p.get("connected"))] for p in proxies])  # fmt: skip
    for warning in warnings:
        say(f"warning: {warning}", err=True)


def _progress(rotation: dict[str, Any]) -> str:
    waiting = rotation.get("waiting") or []
    line = f"root rotation: phase {rotation.get('phase')}"
    if waiting:
        shown = ", ".join(waiting[:5]) + (" ..." if len(waiting) > 5 else "")
        line += f", waiting for {len(waiting)} of {rotation.get('connected')} proxies ({shown})"
    return line


def _brought(files: tuple[Path | None, Path | None, Path | None]) -> dict[str, str] | None:
    """The operator's new CA read from ``--ca-cert``, ``--ca-key``, ``--ca-bundle`` (all three
    or none: then the control plane makes a new root of its own)."""
    if all(path is None for path in files):
        return None
    if any(path is None for path in files):
        error("--ca-cert, --ca-key and --ca-bundle go together")
        raise typer.Exit(2)
    try:
        names = ("ca_cert", "ca_key", "ca_bundle")
        return {name: Path(str(path)).read_text("ascii")
                for name, path in zip(names, files, strict=True)}  # fmt: skip
    except (OSError, UnicodeDecodeError) as exc:
        error(f"cannot read the new CA: {exc}")
        raise typer.Exit(1) from None


def rotate(
    ca_cert: Annotated[Path | None, typer.Option(
        help="An intermediate under your organisation's root (then the ones above it), PEM",
    )] = None,
    ca_key: Annotated[Path | None, typer.Option(help="The intermediate's private key, PEM")] = None,
    ca_bundle: Annotated[Path | None, typer.Option(
        help="The organisation's root(s) every sidecar is to trust, PEM")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to follow the rotation")] = 300.0,
    wait: Annotated[bool, typer.Option(help="Follow the phases until the rotation is over")] = (
        True
    ),
    control_url: ControlUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Replace the mesh's root (or move it onto your organisation's intermediate with
    --ca-cert/--ca-key/--ca-bundle): the new root in every bundle, every certificate issued
    again under it, the old root out; no connection is refused on the way."""
    brought = _brought((ca_cert, ca_key, ca_bundle))
    with expected_errors(), connect(control_url, data_dir) as client:
        state = client.start_root_rotation(brought)
        new = state.get("new_root", {})
        say(f"root rotation started: new {'issuer' if brought else 'root'} "
            f"{new.get('subject', '?')} (serial {new.get('serial', '?')})")  # fmt: skip
        if not wait:
            return
        deadline = time.monotonic() + timeout
        shown = ""
        while state.get("phase") is not None:
            line = _progress(state)
            if line != shown:
                say(line)
                shown = line
            if time.monotonic() > deadline:
                error(f"the rotation is still in phase {state.get('phase')} after {timeout:g} s "
                      "(it goes on; see `gossamer certs status`)")  # fmt: skip
                raise typer.Exit(1)
            time.sleep(0.2)
            state = client.root_rotation()
        last = state.get("last") or {}
        say(f"root rotation done: {last.get('new_root', {}).get('subject', '?')} replaced "
            f"{last.get('old_root', {}).get('subject', '?')}")  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command()(revoke)
    certs = typer.Typer(help="The mesh's certificates: roots and proxies.", no_args_is_help=True)
    certs.command("status")(status)
    certs.command("rotate")(rotate)
    app.add_typer(certs, name="certs")
