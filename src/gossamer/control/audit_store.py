"""The audit log at the control plane: records received from the sidecars, stored once, queried.

Lives in ``<data-dir>/audit.db`` (SQLite, WAL, ``synchronous=FULL``), apart from the resource
store. ``receive`` takes one ``audit`` message of a sidecar's stream (docs/internals.md §15):
it checks each record line (one JSON object of this chain, of the sending sidecar's own
workload: a sidecar cannot write another's records), keeps each (chain, seq) once (a batch
sent again after a lost ack adds nothing) and the checkpoint if there is one, commits, and
only then returns the highest ``seq`` held, which the sidecar takes as its acknowledgement. A
chain belongs to the identity that first sent it; another identity's records for it are
refused.

Records are kept as the sidecar wrote them (``entry``: the canonical JSON its hash covers),
with the fields a query filters on copied into columns. Nothing here judges the chain:
``gossamer audit verify`` does that from the entries, outside this store
(``gossamer.audit_verify``).

Retention (``prune``) removes a chain's records only up to one of its signed checkpoints,
received before the cut-off, and keeps that checkpoint as the chain's *anchor*: verification
starts from the hash the anchor signed, so what retention removed is a stated, signed
boundary, never a gap that reads as deletion, while a record removed any other way still
does.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MAX_RECORDS", "AuditFilter", "AuditRefused", "AuditStore", "Pruned", "Sender"]

MAX_RECORDS = 1000  # per message
MAX_ENTRY = 64 * 1024  # bytes of one record line
QUERY_LIMIT = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chains (
    chain TEXT PRIMARY KEY, namespace TEXT NOT NULL, service TEXT NOT NULL,
    identity TEXT NOT NULL, proxy_id TEXT NOT NULL, first_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    chain TEXT NOT NULL, seq INTEGER NOT NULL, time TEXT NOT NULL, namespace TEXT NOT NULL,
    service TEXT NOT NULL, caller TEXT, subject TEXT, method TEXT, path TEXT,
    status INTEGER, decision TEXT, entry TEXT NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX IF NOT EXISTS records_time ON records (time);
CREATE INDEX IF NOT EXISTS records_service ON records (namespace, service, time);
CREATE TABLE IF NOT EXISTS checkpoints (
    chain TEXT NOT NULL, seq INTEGER NOT NULL, entry TEXT NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX IF NOT EXISTS checkpoints_received ON checkpoints (received);
CREATE TABLE IF NOT EXISTS anchors (
    chain TEXT PRIMARY KEY, seq INTEGER NOT NULL, entry TEXT NOT NULL, pruned REAL NOT NULL
);
"""


class AuditRefused(Exception):
    """An ``audit`` message that is refused whole (nothing of it is stored)."""


@dataclass(frozen=True, slots=True)
class Sender:
    """The sidecar a message came from, as its stream proved it."""

    namespace: str
    service: str
    identity: str
    proxy_id: str


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What ``query`` selects (None: any). Times are ISO 8601 UTC, compared as text."""

    since: str | None = None
    until: str | None = None
    namespace: str | None = None
    service: str | None = None
    caller: str | None = None
    subject: str | None = None
    status: int | None = None
    method: str | None = None
    decision: str | None = None
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one ``prune`` removed."""

    chains: int  # chains whose anchor moved
    records: int
    checkpoints: int


_Row = tuple[str, int, str, str, str, Any, Any, Any, Any, Any, Any, str, float]


def _rows(chain: str, lines: Sequence[Any], sender: Sender, now: float) -> list[_Row]:
    """Each line checked and made a row; ``AuditRefused`` naming the first bad one."""
    rows: list[_Row] = []
    for i, line in enumerate(lines):
        if not isinstance(line, str) or len(line) > MAX_ENTRY:
            raise AuditRefused(f"records[{i}]: expected a record line of at most {MAX_ENTRY}")
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise AuditRefused(f"records[{i}]: not JSON: {exc}") from None
        if not isinstance(record, dict) or record.get("chain") != chain:
            raise AuditRefused(f"records[{i}]: not a record of chain {chain}")
        seq, when = record.get("seq"), record.get("time")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1 or type(when) is not str:
            raise AuditRefused(f"records[{i}]: seq and time are required")
        if (record.get("namespace"), record.get("service")) != (sender.namespace, sender.service):
            raise AuditRefused(f"records[{i}]: a record of another workload")
        status = record.get("status")
        rows.append((
            chain, seq, when, sender.namespace, sender.service, record.get("caller"),
            record.get("subject"), record.get("method"), record.get("path"),
            status if isinstance(status, int) else None, record.get("decision"), line, now,
        ))  # fmt: skip
    return rows


def _checkpoint(chain: str, raw: Any) -> tuple[int, str] | None:
    if raw is None:
        return None
    fields = ("chain", "seq", "head", "time", "certificate", "signature")
    if not isinstance(raw, Mapping) or any(f not in raw for f in fields):
        raise AuditRefused(f"checkpoint: expected an object with {', '.join(fields)}")
    seq = raw["seq"]
    if raw["chain"] != chain or isinstance(seq, bool) or not isinstance(seq, int):
        raise AuditRefused("checkpoint: not a checkpoint of this chain")
    return seq, json.dumps({f: raw[f] for f in fields}, sort_keys=True, separators=(",", ":"))


class AuditStore:
    """The SQLite audit log. Thread-safe; each method is one transaction."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        with self._transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def receive(self, message: Mapping[str, Any], sender: Sender) -> tuple[str, int]:
        """Store one ``audit`` message; (its chain, the highest seq held for it)."""
        chain, lines = message.get("chain"), message.get("records")
        if not isinstance(chain, str) or not 1 <= len(chain) <= 64 or not chain.isalnum():
            raise AuditRefused("chain: expected an id of 1-64 letters and digits")
        if not isinstance(lines, list) or len(lines) > MAX_RECORDS:
            raise AuditRefused(f"records: expected a list of at most {MAX_RECORDS} lines")
        now = time.time()
        rows = _rows(chain, lines, sender, now)
        checkpoint = _checkpoint(chain, message.get("checkpoint"))
        with self._transaction() as db:
            owner = db.execute("SELECT identity FROM chains WHERE chain = ?", (chain,)).fetchone()
            if owner is None:
                db.execute("INSERT INTO chains VALUES (?, ?, ?, ?, ?, ?)", (chain,
                           sender.namespace, sender.service, sender.identity, sender.proxy_id,
                           now))  # fmt: skip
            elif owner[0] != sender.identity:
                raise AuditRefused(f"chain {chain} belongs to {owner[0]}")
            anchored = db.execute("SELECT seq FROM anchors WHERE chain = ?", (chain,)).fetchone()
            pruned = anchored[0] if anchored else 0  # records retention removed stay removed
            db.executemany(
                "INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [row for row in rows if row[1] > pruned],
            )
            if checkpoint is not None and checkpoint[0] > pruned:
                db.execute("INSERT OR IGNORE INTO checkpoints VALUES (?, ?, ?, ?)",
                           (chain, checkpoint[0], checkpoint[1], now))  # fmt: skip
            row = db.execute("SELECT MAX(seq) FROM records WHERE chain = ?", (chain,)).fetchone()
        return chain, max(int(row[0] or 0), pruned)

    def prune(self, before: float) -> Pruned:
        """Remove, chain by chain, the records up to the newest checkpoint received before
        ``before`` (seconds since the epoch), and the older checkpoints; that checkpoint
        becomes the chain's anchor. A chain with no such checkpoint keeps everything. One
        transaction per chain, so receiving is never held up for long."""
        with self._lock:
            due = self._db.execute(
                "SELECT k.chain, MAX(k.seq) FROM checkpoints k WHERE k.received < ?"
                " GROUP BY k.chain", (before,),
            ).fetchall()  # fmt: skip
        chains = records = checkpoints = 0
        for chain, seq in due:
            with self._transaction() as db:
                anchored = db.execute(
                    "SELECT seq FROM anchors WHERE chain = ?", (chain,)
                ).fetchone()
                if anchored is not None and anchored[0] >= seq:
                    continue
                entry = db.execute("SELECT entry FROM checkpoints WHERE chain = ? AND seq = ?",
                                   (chain, seq)).fetchone()[0]  # fmt: skip
                records += db.execute("DELETE FROM records WHERE chain = ? AND seq <= ?",
                                      (chain, seq)).rowcount  # fmt: skip
                checkpoints += db.execute("DELETE FROM checkpoints WHERE chain = ? AND seq < ?",
                                          (chain, seq)).rowcount  # fmt: skip
                db.execute("INSERT OR REPLACE INTO anchors VALUES (?, ?, ?, ?)",
                           (chain, seq, entry, time.time()))  # fmt: skip
                chains += 1
        return Pruned(chains, records, checkpoints)

    def query(self, selection: AuditFilter) -> list[dict[str, Any]]:
        """The records ``selection`` selects, oldest first (each as the sidecar wrote it)."""
        clauses, values = [], []
        for column, op, value in (
            ("time", ">=", selection.since), ("time", "<=", selection.until),
            ("namespace", "=", selection.namespace), ("service", "=", selection.service),
            ("caller", "=", selection.caller), ("subject", "=", selection.subject),
            ("status", "=", selection.status), ("method", "=", selection.method),
            ("decision", "=", selection.decision),
        ):  # fmt: skip
            if value is not None:
                clauses.append(f"{column} {op} ?")
                values.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        limit = max(1, min(selection.limit, QUERY_LIMIT))
        with self._lock:
            rows = self._db.execute(
                f"SELECT entry FROM records {where} ORDER BY time, chain, seq LIMIT ?",
                (*values, limit),
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def chains(self) -> list[dict[str, Any]]:
        """Every chain: its owner and how many records and checkpoints it holds."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.chain, c.namespace, c.service, c.identity, c.proxy_id, c.first_seen,"
                " (SELECT COUNT(*) FROM records r WHERE r.chain = c.chain),"
                " (SELECT MAX(seq) FROM records r WHERE r.chain = c.chain),"
                " (SELECT COUNT(*) FROM checkpoints k WHERE k.chain = c.chain),"
                " (SELECT COALESCE(MAX(a.seq), 0) FROM anchors a WHERE a.chain = c.chain)"
                " FROM chains c ORDER BY c.first_seen"
            ).fetchall()
        keys = ("chain", "namespace", "service", "identity", "proxy_id", "first_seen",
                "records", "last_seq", "checkpoints", "pruned_through")  # fmt: skip
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def entries(self, chain: str, after: int, limit: int) -> dict[str, Any]:
        """A page of one chain as stored, for verification: records with ``seq`` after
        ``after`` (``seq`` as the store keeps it, ``entry`` as received) and, with the first
        page, every checkpoint and the anchor retention left (None if it never pruned)."""
        limit = max(1, min(limit, QUERY_LIMIT))
        with self._lock:
            records = self._db.execute(
                "SELECT seq, entry FROM records WHERE chain = ? AND seq > ? ORDER BY seq LIMIT ?",
                (chain, after, limit),
            ).fetchall()
            checkpoints = self._db.execute(
                "SELECT seq, entry FROM checkpoints WHERE chain = ? ORDER BY seq", (chain,)
            ).fetchall() if after == 0 else []  # fmt: skip
            anchor = self._db.execute(
                "SELECT seq, entry FROM anchors WHERE chain = ?", (chain,)
            ).fetchone() if after == 0 else None  # fmt: skip
        return {
            "records": [{"seq": seq, "entry": entry} for seq, entry in records],
            "checkpoints": [{"seq": seq, "entry": entry} for seq, entry in checkpoints],
            "anchor": {"seq": anchor[0], "entry": anchor[1]} if anchor else None,
        }
