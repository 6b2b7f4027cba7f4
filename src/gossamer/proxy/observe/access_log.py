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
from typing import Any

from gossamer.json_lines import encode
from gossamer.proxy.observe.timestamps import utc_millis

__all__ = ["FLUSH_INTERVAL", "MAX_QUEUE", "AccessLog", "Entry", "format_line"]

log = logging.getLogger("gossamer.proxy.access_log")

FLUSH_INTERVAL = 0.1
MAX_QUEUE = 10_000
PIPE_ATOMIC = 4096  # a write at most this long to a pipe is never interleaved with another

# (start in unix ns, direction, protocol, method, authority, path, status, error,
#  request bytes, response bytes, duration in ns, service, upstream, peer, request id,
#  trace id, user agent): ACCESS_LOG_FIELDS' order.
Entry = tuple[int, str, str, bytes, bytes, bytes, int, str, int, int, int, str, str, str,
              bytes, str | None, bytes | None]  # fmt: skip


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value else None


def _fields(entry: Entry) -> dict[str, Any]:
    (start, direction, protocol, method, authority, path, status, error, received, sent,
     duration, service, upstream, peer, request_id, trace_id, user_agent) = entry  # fmt: skip
    return {
        "time": utc_millis(start), "direction": direction, "protocol": protocol,
        "method": _text(method), "authority": _text(authority), "path": _text(path),
        "status": status, "error": error or None, "request_bytes": received,
        "response_bytes": sent, "duration_ms": round(duration / 1e6, 3),
        "service": service or None, "upstream": upstream or None, "peer": peer or None,
        "request_id": _text(request_id), "trace_id": trace_id, "user_agent": _text(user_agent),
    }  # fmt: skip


def format_line(entry: Entry, fmt: str, template: str) -> bytes:
    """One line (ending in LF) for ``entry``."""
    fields = _fields(entry)
    if fmt == "json":  # (JSON escapes any line break inside a value)
        return encode(fields, ascii=False, sort_keys=False) + b"\n"
    text = template.format_map({k: "-" if v is None or v == "" else v
                                for k, v in fields.items()})  # fmt: skip
    return (text.replace("\n", " ") + "\n").encode("utf-8", "replace")


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
        chunk: list[bytes] = []
        size = 0
        while queue:
            line = format_line(queue.popleft(), self.format, self.template)
            if size + len(line) > PIPE_ATOMIC and chunk:
                self._write(b"".join(chunk), len(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write(b"".join(chunk), len(chunk))

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
