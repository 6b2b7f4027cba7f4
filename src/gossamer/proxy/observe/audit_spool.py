"""The audit spool: one chain of sealed records, appended to files before they count.

``AuditSpool`` owns one chain (``gossamer.audit_chain``) in its own directory
(``<workdir>/audit/<slot>``: one per process that serves requests): ``chain`` holds its id,
and segment files hold one record per line. A segment is named after the chain's head where
it starts (``<first seq>-<hash of the record before>.log``), so the head survives in a name
even when every record is shipped and the disk has no byte left for a file. A new segment
starts at ``segment_bytes`` (a sixteenth of the limit, between 1 KiB and 4 MiB), and when
the disk refuses a write. The shipper (``proxy/process/audit_shipper.py``) reads the
segments, sends the records to the control plane and deletes the segments it acknowledged
(all but the newest).

The durability rule (docs/internals.md §15): ``append`` writes the record's line with
``write(2)`` before it returns, and the codecs complete a request's stages before its last
response bytes go to the caller; so a record is in the kernel's hands before the caller has
the whole answer, and survives the sidecar's crash or SIGKILL. A background thread
``fsync``s the spool every ``FSYNC_INTERVAL``, so a crash of the machine loses at most that
much. A restart continues the chain from the last whole line (a torn one is cut).

Full: the spool holds at most ``limit`` bytes not yet acknowledged. Beyond (or when the disk
refuses a write), what happens is the MeshConfig's choice (``onSpoolFull``):

- ``block``: new audited requests are refused (503 ``audit-unavailable``) until there is
  room again; a request already admitted is recorded anyway (the limit may be passed by the
  requests in flight; a record the disk refuses waits in memory, at most ``MAX_PENDING``,
  and is written when it can be);
- ``drop``: the request goes on unrecorded; the next record written says how many were
  dropped before it (``dropped_before``), so the gap is in the chain itself.

Either way every outcome is counted (``gossamer_audit_records_total{outcome}``) and the first
of a run of refusals or drops is logged as a warning.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from gossamer.audit_chain import GENESIS, seal
from gossamer.json_lines import OMIT, Rows
from gossamer.proxy.observe.timestamps import duration_ms, utc_millis

__all__ = [
    "FSYNC_INTERVAL", "MAX_PENDING", "RECORD_MEMBERS", "AuditSpool", "record_dict",
    "segment_start", "segments",
]  # fmt: skip

log = logging.getLogger("gossamer.proxy.audit")

MAX_SEGMENT = 4 * 1024 * 1024
MIN_SEGMENT = 1024
FSYNC_INTERVAL = 0.1
RESCAN_INTERVAL = 1.0  # how often the room left is read from the directory again
MAX_PENDING = 4096  # records the disk refused, kept in memory until they are written
_SUFFIX = ".log"
# A request's or connection's record as a row (``pipeline/audit.py`` makes it): its members
# in canonical (sorted) order, and how each raw value is written (``gossamer.json_lines.Rows``:
# "t" the start in Unix nanoseconds as RFC 3339 text, "d" nanoseconds as milliseconds, "e" an
# empty text as null). The spool fills chain, seq, prev and dropped_before (``OMIT``: none).
RECORD_MEMBERS = (
    ("audit_policies", "v"), ("authority", "v"), ("caller", "e"), ("chain", "v"),
    ("decision", "v"), ("dropped_before", "v"), ("duration_ms", "d"), ("grpc_status", "v"),
    ("method", "v"), ("namespace", "v"), ("path", "v"), ("policy", "e"), ("prev", "v"),
    ("protocol", "v"), ("reason", "e"), ("request_bytes", "v"), ("request_id", "e"),
    ("response_bytes", "v"), ("seq", "v"), ("service", "v"), ("status", "v"),
    ("subject", "v"), ("time", "t"), ("trace_id", "v"),
)  # fmt: skip
_RECORD = Rows(RECORD_MEMBERS, ascii=True, suffix=b"")
_NAMES = [name for name, _ in RECORD_MEMBERS]
CHAIN, DROPPED, PREV, SEQ = (_NAMES.index(n) for n in ("chain", "dropped_before", "prev", "seq"))
# A record's line (or what is left of it to write), its seq and prev, and whether part of it
# is written already (then the rest goes to the same segment).
_Entry = tuple[bytes, int, str, bool]


def record_dict(row: list[Any]) -> dict[str, Any]:
    """The record ``row`` stands for, as a dict (what its line says once parsed)."""
    record: dict[str, Any] = {}
    for (name, kind), value in zip(RECORD_MEMBERS, row, strict=True):
        if value is OMIT:
            continue
        if kind == "t":
            value = utc_millis(value)
        elif kind == "d":
            value = duration_ms(value)
        elif kind == "e" and (value == "" or value == b""):
            value = None
        record[name] = value
    return record


def _seal(record: dict[str, Any] | list[Any]) -> tuple[bytes, str]:
    """The line and hash of a record (a dict, or a row of ``RECORD_MEMBERS``)."""
    if isinstance(record, list):
        sealed = _RECORD.seal(record, record[PREV])
        if sealed is not None:
            return sealed
        record = record_dict(record)
    line = seal(record)
    return line, record["hash"]


def segment_start(path: Path) -> tuple[int, str]:
    """The first seq of a segment, and the hash of the record before it (its name)."""
    first, _, prev = path.stem.partition("-")
    return int(first), prev


def segments(directory: Path) -> list[Path]:
    """The segment files of a spool directory, oldest first."""
    found = []
    for path in directory.iterdir():
        first, _, prev = path.stem.partition("-")
        if path.name.endswith(_SUFFIX) and first.isdigit() and len(prev) == 64:
            found.append(path)
    return sorted(found, key=lambda p: segment_start(p)[0])


def _chain_id(directory: Path) -> str:
    path = directory / "chain"
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    chain = secrets.token_hex(8)
    temporary = directory / "chain.tmp"
    temporary.write_text(chain + "\n", encoding="ascii")
    os.replace(temporary, path)
    return chain


def _recover(directory: Path) -> tuple[int, str]:
    """The chain's head: the last whole record's (seq, hash), or the name of the newest
    segment when it holds none. A torn last line is cut."""
    found = segments(directory)
    if not found:
        return 0, GENESIS
    newest = found[-1]
    data = newest.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with newest.open("r+b") as file:
            file.truncate(end)
        log.warning("audit spool %s: cut a torn record at its end", newest)
    if end == 0:
        first, prev = segment_start(newest)
        return first - 1, prev
    start = data.rfind(b"\n", 0, end - 1) + 1
    last = json.loads(data[start:end])
    return int(last["seq"]), str(last["hash"])


class AuditSpool:
    """One chain's records, written to segment files (see the module docstring)."""

    def __init__(self, directory: Path, *, limit: int, block: bool) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory = directory
        self.limit = limit  # the property below sets the segment size too
        self.block = block
        self.chain = _chain_id(directory)
        self.seq, self.head = _recover(directory)
        self.counts = {"written": 0, "dropped": 0, "refused": 0}
        self._dropped = 0  # records dropped since the last one written
        self._pending: list[_Entry] = []  # what the disk refused, in order
        self._warned = False
        self._lock = threading.Lock()
        self._retired: list[int] = []  # segment fds to fsync and close (the flusher's)
        self._dirty = False
        self._fd = -1
        self._size = 0
        self._open_newest()
        self.used = sum(p.stat().st_size for p in segments(directory))
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="audit-fsync", daemon=True)
        self._flusher.start()

    # === the request path ===

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, limit: int) -> None:
        self._limit = limit
        self.segment_bytes = max(MIN_SEGMENT, min(MAX_SEGMENT, limit // 16))

    @property
    def accepting(self) -> bool:
        """Whether a new audited request may start (room left, and the disk writes)."""
        return self.used < self.limit and not self._pending

    def refused(self) -> None:
        """An audited request was refused because the spool is full (``block``)."""
        self.counts["refused"] += 1
        self._warn("refusing audited requests")

    def append(self, record: dict[str, Any] | list[Any]) -> bool:
        """Seal ``record`` as the next record and write it; False when it was dropped. A
        dict becomes the record itself (chain, seq, prev and hash are set in it); a list is
        a row of ``RECORD_MEMBERS`` (chain, seq, prev and dropped_before set in it), the
        sidecar's own records, sealed natively without a dict."""
        lock = self._lock
        lock.acquire()  # (cheaper than ``with`` in the compiled build)
        try:
            pending = self._pending
            if self.block:
                full = len(pending) >= MAX_PENDING
            else:
                full = self.used >= self._limit or len(pending) > 0
            if full:
                self._dropped += 1
                self.counts["dropped"] += 1
                self._warn("dropping audit records")
                return False
            seq = self.seq + 1
            prev = self.head
            if isinstance(record, list):
                record[CHAIN] = self.chain
                record[SEQ] = seq
                record[PREV] = prev
                record[DROPPED] = self._dropped or OMIT
            else:
                record["chain"] = self.chain
                record["seq"] = seq
                record["prev"] = prev
                if self._dropped:
                    record["dropped_before"] = self._dropped
            self._dropped = 0
            if self._size >= self.segment_bytes and not pending:
                self._rotate(seq, prev)
            line, digest = _seal(record)
            self.seq = seq
            self.head = digest
            self.counts["written"] += 1
            if pending:
                pending.append((line, seq, prev, False))
            else:
                self._write_line(line, seq, prev)
            if self._warned and self.accepting:
                self._warned = False
                log.info("audit spool %s has room again", self.directory)
            return True
        finally:
            lock.release()

    # === internals (under the lock) ===

    def _write_line(self, data: bytes, seq: int, prev: str) -> None:
        """Write a new record's line: one ``write(2)`` when the disk takes it whole (the
        common case), else ``_write`` with what is left."""
        try:
            done = os.write(self._fd, data)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
                raise
            done = 0
        if done > 0:
            self._size += done
            self.used += done
            self._dirty = True
            if done == len(data):
                return
        self._write((data, seq, prev, False), done)

    def _write(self, entry: _Entry, written: int = 0) -> None:
        """Write an entry's line whole (``written`` bytes of it are in the segment already),
        or keep it for the flusher: a line the disk refused half-way is cut back off the
        segment, which then ends with a whole record, and the line goes to a new segment (so
        the shipper can delete the full one once shipped)."""
        data, seq, prev, started = entry
        begin = self._size - written
        view = memoryview(data)[written:]
        while view:
            try:
                done = os.write(self._fd, view)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
                    raise
                self._warn(f"the disk refused an audit record ({exc.strerror})")
                if not started and self._size > begin:
                    try:
                        os.ftruncate(self._fd, begin)
                    except OSError:
                        started = True  # the rest must follow in this segment
                    else:
                        self.used -= self._size - begin
                        self._size = begin
                        view = memoryview(data)
                self._pending.insert(0, (bytes(view), seq, prev, started))
                if self._size and not started:
                    with contextlib.suppress(OSError):
                        self._rotate(seq, prev)
                return
            view = view[done:]
            self._size += done
            self.used += done
            self._dirty = True

    def _rotate(self, first: int, prev: str) -> None:
        """Start the segment whose first record is ``first`` (its ``prev`` in the name)."""
        path = self.directory / f"{first:020d}-{prev}{_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if self._fd >= 0:
            self._retired.append(self._fd)
        self._fd = fd
        self._size = 0

    def _open_newest(self) -> None:
        existing = segments(self.directory)
        if existing:
            self._fd = os.open(existing[-1], os.O_WRONLY | os.O_APPEND)
            self._size = existing[-1].stat().st_size
        else:
            self._rotate(self.seq + 1, self.head)

    def _warn(self, what: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("audit spool %s full or failing (%d of %d bytes used): %s",
                        self.directory, self.used, self.limit, what)  # fmt: skip

    # === the flusher thread ===

    def _flush_loop(self) -> None:
        rescan = 0.0
        while not self._stop.wait(FSYNC_INTERVAL):
            self.flush()
            rescan += FSYNC_INTERVAL
            if rescan >= RESCAN_INTERVAL:
                rescan = 0.0
                self._rescan()

    def flush(self) -> None:
        """Write what waits, then fsync what was written (the flusher calls it)."""
        with self._lock:
            pending, self._pending = self._pending, []
            for entry in pending:
                if self._pending:
                    self._pending.append(entry)
                else:
                    self._write(entry)
            retired, self._retired = self._retired, []
            fd, dirty, self._dirty = self._fd, self._dirty, False
        for old in retired:
            os.fsync(old)
            os.close(old)
        if dirty:
            try:
                os.fsync(fd)
            except OSError as exc:  # rotated and closed meanwhile: fsynced as retired
                if exc.errno != errno.EBADF:
                    log.warning("audit spool fsync failed: %s", exc)

    def _rescan(self) -> None:
        """Read the room used from the directory (the shipper deletes acknowledged segments)."""
        try:
            used = sum(p.stat().st_size for p in segments(self.directory))
        except OSError:
            return
        with self._lock:
            self.used = used

    def close(self) -> None:
        self._stop.set()
        self._flusher.join(timeout=5.0)
        self.flush()
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
