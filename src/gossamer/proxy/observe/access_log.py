"""Access log lines: one per request, formatted and written off the request path.

The ``AccessLogStage`` (``pipeline/access_log.py``) hands each completed request to ``add`` as
a tuple of raw values in ``ACCESS_LOG_FIELDS`` order (the request path pays an append to a
deque and nothing else); a thread of this writer wakes every ``FLUSH_INTERVAL``, formats what
waits (JSON, or the text template's ``{field}`` placeholders, ``-`` for an empty value) and
appends it to the file (``O_APPEND``: several sidecars or workers may share one) in writes of
whole lines. At most ``MAX_QUEUE`` lines wait; beyond, a line is dropped and counted
(``gossamer_access_log_lines_total{outcome}``), so a slow disk never holds a
request up and never grows the sidecar without bound. docs/internals.md §16 lists the fields.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from gossamer.json_lines import Rows, encode
from gossamer.proxy.observe.timestamps import duration_ms, utc_millis

__all__ = ["FLUSH_INTERVAL", "MAX_QUEUE", "AccessLog", "Entry", "format_line", "format_lines"]

log = logging.getLogger("gossamer.proxy.access_log")

FLUSH_INTERVAL = 0.1
MAX_QUEUE = 10_000
PIPE_ATOMIC = 4096  # a write at most this long to a pipe is never interleaved with another
BATCH = 256  # lines formatted at once

# (start in unix ns, direction, protocol, method, authority, path, status, error,
#  request bytes, response bytes, duration in ns, service, upstream, peer, request id,
#  trace id, user agent): ACCESS_LOG_FIELDS' order.
Entry = tuple[int, str, str, bytes, bytes, bytes, int, str, int, int, int, str, str,
              str | bytes, bytes, bytes | None, bytes | None]  # fmt: skip


# The JSON line's members in ``Entry`` order, and how each raw value is written
# (``gossamer.json_lines.encode_rows``' kinds): "t" the start's RFC 3339 text (``utc_millis``),
# "d" nanoseconds as milliseconds (``duration_ms``), "e" an empty text as null, "v" as it is.
_MEMBERS = (
    ("time", "t"), ("direction", "v"), ("protocol", "v"), ("method", "e"), ("authority", "e"),
    ("path", "e"), ("status", "v"), ("error", "e"), ("request_bytes", "v"),
    ("response_bytes", "v"), ("duration_ms", "d"), ("service", "e"), ("upstream", "e"),
    ("peer", "e"), ("request_id", "e"), ("trace_id", "v"), ("user_agent", "e"),
)  # fmt: skip
_ROWS = Rows(_MEMBERS, ascii=False)


def _null_if_empty(value: Any) -> Any:
    return None if value == "" or value == b"" else value


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "t": utc_millis, "d": duration_ms, "e": _null_if_empty, "v": lambda value: value,
}  # fmt: skip


def _fields(entry: Entry) -> dict[str, Any]:
    """The line's members; header values stay bytes (JSON writes them as Latin-1 text)."""
    pairs = zip(_MEMBERS, entry, strict=True)
    return {name: _CONVERT[kind](value) for (name, kind), value in pairs}


def _template_value(value: Any) -> Any:
    if value is None or value == "" or value == b"":
        return "-"
    return value.decode("latin-1") if isinstance(value, bytes) else value


def format_line(entry: Entry, fmt: str, template: str) -> bytes:
    """One line (ending in LF) for ``entry``."""
    fields = _fields(entry)
    if fmt == "json":  # (JSON escapes any line break inside a value)
        return encode(fields, ascii=False, sort_keys=False) + b"\n"
    text = template.format_map({k: _template_value(v) for k, v in fields.items()})
    return (text.replace("\n", " ") + "\n").encode("utf-8", "replace")


def format_lines(entries: list[Entry], fmt: str, template: str) -> bytes:
    """The lines of ``entries``, each ending in LF: JSON ones made in one native call when
    the encoder is built (``Rows``: the same bytes as ``format_line``)."""
    if fmt == "json":
        lines = _ROWS.encode(entries)
        if lines is not None:
            return lines
    return b"".join([format_line(entry, fmt, template) for entry in entries])


class AccessLog:
    """The writer of one access log destination (see the module docstring)."""

    def __init__(self, fmt: str, template: str, path: str) -> None:
        self.format = fmt
        self.template = template
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.written = 0  # counted by the writer thread
        self.dropped_full = 0  # by the request path: the queue was full
        self.dropped_failed = 0  # by the writer thread: the write failed
        self._queue: deque[Entry] = deque()
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._writer.start()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.format, self.template, self.path)

    def add(self, entry: Entry) -> None:
        """Queue a line (the request path's whole share)."""
        if len(self._queue) >= MAX_QUEUE:
            self.dropped_full += 1
            return
        self._queue.append(entry)

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            self._drain()

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            entries = [queue.popleft() for _ in range(min(len(queue), BATCH))]
            data = format_lines(entries, self.format, self.template)
            # Writes of whole lines, each at most PIPE_ATOMIC long (unless one line is).
            start, size = 0, len(data)
            while start < size:
                end = size
                if size - start > PIPE_ATOMIC:
                    end = data.rfind(b"\n", start, start + PIPE_ATOMIC) + 1
                    if end <= start:  # one line longer than PIPE_ATOMIC
                        end = data.index(b"\n", start) + 1
                self._write(data[start:end], data.count(b"\n", start, end))
                start = end

    def _write(self, data: bytes, lines: int) -> None:
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError as exc:
            self.dropped_failed += lines
            log.warning("access log %s: %s", self.path, exc)
            return
        self.written += lines

    def close(self) -> None:
        """Write what waits and close."""
        self._stop.set()
        self._writer.join(timeout=5.0)
        self._drain()
        os.close(self.fd)
