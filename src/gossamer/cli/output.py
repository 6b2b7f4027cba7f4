"""Rendering of CLI output: tables (rich), JSON and YAML, and error messages on stderr."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

__all__ = [
    "Format",
    "err_console",
    "error",
    "format_age",
    "print_data",
    "print_table",
    "proxy_rows",
    "resource_rows",
    "say",
]

err_console = Console(stderr=True, highlight=False)
PIPE_WIDTH = 250  # tables written to a pipe or file are not wrapped at 80 columns


def _console() -> Console:
    """A console on the current stdout; wide when it is not a terminal."""
    terminal = sys.stdout.isatty()
    return Console(highlight=False, width=None if terminal else PIPE_WIDTH)


class Format(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


def error(message: str) -> None:
    """Print ``error: message`` on stderr (plain: no markup, no wrapping)."""
    say(f"error: {message}", err=True)


def say(line: str, *, err: bool = False) -> None:
    """Print one plain line (no markup, no wrapping) on stdout or stderr."""
    stream = sys.stderr if err else sys.stdout
    stream.write(line + "\n")
    stream.flush()


def print_data(data: Any, fmt: Format) -> None:
    """Print ``data`` as JSON or YAML on stdout (plain, for pipes)."""
    if fmt is Format.json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    sys.stdout.flush()


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *,
                title: str | None = None) -> None:
    table = Table(title=title, show_edge=False, box=None, pad_edge=False, header_style="bold",
                  title_justify="left")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*row)
    _console().print(table)


def format_age(seconds: float) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _expiry(value: Any) -> str:
    if value in (None, ""):
        return "-"
    try:
        if isinstance(value, int | float):
            when = float(value)
        else:
            when = datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return str(value)
    left = when - time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    return f"{stamp} (in {format_age(left)})" if left > 0 else f"{stamp} (expired)"


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


PROXY_HEADERS = ("SERVICE", "PROXY ID", "IDENTITY", "ADMIN", "CONFIG", "ACK", "CERT EXPIRY")


def proxy_rows(items: Iterable[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for item in items:
        service = _text(item.get("service"))
        namespace = item.get("namespace")
        if namespace and namespace != "default":
            service = f"{service}.{namespace}"
        ack = _text(item.get("ack_state"))
        if ack == "NACK" and item.get("nack_error"):
            ack = f"NACK: {item['nack_error']}"
        version = f"{_text(item.get('config_version'))}/{_text(item.get('acked_version'))}"
        rows.append([service, _text(item.get("proxy_id")), _text(item.get("identity")),
                     _text(item.get("admin_address")), version, ack,
                     _expiry(item.get("cert_expiry"))])
    return rows


RESOURCE_HEADERS = ("KIND", "NAMESPACE", "NAME", "REVISION", "GENERATION")


def resource_rows(items: Iterable[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for item in items:
        metadata = item.get("metadata") or {}
        rows.append([_text(item.get("kind")), _text(metadata.get("namespace", "default")),
                     _text(metadata.get("name")), _text(metadata.get("revision")),
                     _text(metadata.get("generation"))])
    return rows
