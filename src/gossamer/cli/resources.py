"""``gossamer apply``, ``get`` and ``delete``: resources and proxies through the config API."""

from __future__ import annotations

import sys
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
from gossamer.cli.output import (
    PROXY_HEADERS,
    RESOURCE_HEADERS,
    Format,
    error,
    print_data,
    print_table,
    proxy_rows,
    resource_rows,
    say,
)
from gossamer.config.kinds import KINDS, kind_for
from gossamer.local.client import InvalidResources, NotFound

__all__ = ["apply", "delete", "get", "register"]

_PROXY_KINDS = ("proxies", "proxy")
_ENDPOINT_KINDS = ("endpoints", "endpoint")


def _read_input(file: str) -> tuple[str, str]:
    """The text of ``file`` (``-``: stdin) and its content type."""
    if file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            error(f"cannot read {file}: {exc.strerror or exc}")
            raise typer.Exit(1) from None
        except UnicodeDecodeError as exc:
            line = Path(file).read_bytes()[: exc.start].count(b"\n") + 1
            error(f"{file}: line {line}: byte 0x{exc.object[exc.start]:02x} is not UTF-8 "
                  "(save the file as UTF-8)")
            raise typer.Exit(1) from None
    stripped = text.lstrip()
    is_json = file.endswith(".json") or stripped.startswith(("{", "["))
    return text, "application/json" if is_json else "application/yaml"


def apply(
    file: Annotated[str, typer.Option("--filename", "-f", help="YAML or JSON file, - for stdin")],
    control_url: ControlUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create or update resources from a file (all documents or none)."""
    text, content_type = _read_input(file)
    if not text.strip():
        error(f"{file}: no documents")
        raise typer.Exit(1)
    with expected_errors(), connect(control_url, data_dir) as client:
        try:
            applied = client.apply(text, content_type=content_type)
        except InvalidResources as exc:
            for field_error in exc.errors:
                say(str(field_error), err=True)
            raise typer.Exit(1) from None
        warnings = client.last_warnings
    for item in applied:
        line = f"{str(item.get('kind', '?')).lower()}/{item.get('name')} {item.get('action')}"
        namespace = item.get("namespace")
        if namespace and namespace != "default":
            line += f" (namespace {namespace})"
        say(line)
    for warning in warnings:
        say(f"warning: {warning}", err=True)


def _known_kind(kind: str, *, also: tuple[str, ...] = ()) -> None:
    """Refuse an unknown kind the same way for every command, listing the kinds (exit 2)."""
    if kind_for(kind) is not None or kind.lower() in also:
        return
    kinds = ", ".join(sorted(cls.PLURAL.lower() for cls in KINDS.values()))
    extra = f"; and {', '.join(also[::2])}" if also else ""
    error(f"unknown kind {kind!r}; kinds: {kinds}{extra}")
    raise typer.Exit(2)


def _print_items(items: list[dict[str, Any]], output: Format, headers: tuple[str, ...],
                 rows: list[list[str]], empty: str) -> None:
    if output is not Format.table:
        print_data({"items": items}, output)
    elif not items:
        say(empty, err=True)
    else:
        print_table(headers, rows)


def get(
    kind: Annotated[str, typer.Argument(help="Resource kind (service, ...), or proxies")],
    name: Annotated[str | None, typer.Argument(help="Resource name")] = None,
    namespace: NamespaceOption = None,
    output: Annotated[Format, typer.Option("--output", "-o", help="Output format")] = Format.table,
    control_url: ControlUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Show resources, or the connected proxies (`gossamer get proxies`)."""
    lowered = kind.lower()
    _known_kind(lowered, also=(*_PROXY_KINDS, *_ENDPOINT_KINDS))
    with expected_errors(), connect(control_url, data_dir) as client:
        if lowered in _PROXY_KINDS:
            items = client.proxies()
            if name is not None:
                items = [p for p in items if name in (p.get("service"), p.get("proxy_id"))]
            _print_items(items, output, PROXY_HEADERS, proxy_rows(items), "no proxies connected")
            return
        if lowered in _ENDPOINT_KINDS:
            if name is None:
                error("usage: gossamer get endpoints SERVICE [-n NAMESPACE]")
                raise typer.Exit(2)
            items = client.endpoints(namespace or "default", name)
            rows = [[str(e.get("address")), str(e.get("port")), str(e.get("healthy")),
                     str(e.get("proxy_id")),
                     ",".join(f"{k}={v}" for k, v in (e.get("labels") or {}).items())]
                    for e in items]
            _print_items(items, output, ("ADDRESS", "PORT", "HEALTHY", "PROXY ID", "LABELS"),
                         rows, f"no endpoints for {name}")
            return
        if name is None:
            items = client.list_resources(lowered, namespace)
            _print_items(items, output, RESOURCE_HEADERS, resource_rows(items),
                         f"no {lowered} found")
            return
        try:
            doc = client.get_resource(lowered, namespace or "default", name)
        except NotFound:
            error(f"{lowered}/{name} not found in namespace {namespace or 'default'}")
            raise typer.Exit(1) from None
        if output is Format.table:
            print_table(RESOURCE_HEADERS, resource_rows([doc]))
        else:
            print_data(doc, output)


def delete(
    kind: Annotated[str, typer.Argument(help="Resource kind")],
    name: Annotated[str, typer.Argument(help="Resource name")],
    namespace: NamespaceOption = None,
    control_url: ControlUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Delete one resource."""
    lowered = kind.lower()
    _known_kind(lowered)
    with expected_errors(), connect(control_url, data_dir) as client:
        try:
            client.delete_resource(lowered, namespace or "default", name)
        except NotFound:
            error(f"{lowered}/{name} not found in namespace {namespace or 'default'}")
            raise typer.Exit(1) from None
    say(f"{lowered.removesuffix('s')}/{name} deleted")


def register(app: typer.Typer) -> None:
    app.command()(apply)
    app.command()(get)
    app.command()(delete)
