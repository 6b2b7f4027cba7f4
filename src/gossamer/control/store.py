"""The durable store: resources, revision counter, change log, join tokens and the ledger of
issued certificates in SQLite (WAL).

Lives in ``<data-dir>/store.db``. Every write is one transaction: an apply of N documents
is all or nothing. Each change takes the next global revision; each resource keeps a
generation that grows when its content changes. Join tokens are stored only as SHA-256 hashes.
Certificates are kept (serial, identity, proxy, expiry, revocation) until they expire. The
registered proxies are kept too (``registry_store``), so a restarted control plane starts from
what the last one knew.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gossamer.config.base import Resource, ResourceKey

__all__ = ["ApplyResult", "Change", "IssuedCertificate", "JoinGrant", "Store"]

Action = Literal["created", "configured", "unchanged"]
CHANGE_LOG_KEEP = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    document TEXT NOT NULL, revision INTEGER NOT NULL, generation INTEGER NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER PRIMARY KEY, type TEXT NOT NULL, document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS join_tokens (
    token_hash TEXT PRIMARY KEY, service TEXT NOT NULL, namespace TEXT NOT NULL,
    expires REAL NOT NULL, used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS certificates (
    serial TEXT PRIMARY KEY, identity TEXT NOT NULL, proxy_id TEXT,
    not_after REAL NOT NULL, revoked_at REAL, reason TEXT
);
CREATE INDEX IF NOT EXISTS certificates_identity ON certificates (identity);
CREATE TABLE IF NOT EXISTS proxies (
    proxy_id TEXT PRIMARY KEY, record TEXT NOT NULL, seen REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_proxy ON certificates (proxy_id);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0);
"""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What an apply did to one document."""

    kind: str
    namespace: str
    name: str
    action: Action
    revision: int

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "action": self.action,
            "revision": self.revision,
        }


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log (what ``/v1/watch`` streams)."""

    revision: int
    type: Literal["applied", "deleted"]
    document: dict[str, Any]

    def to_json(self) -> dict[str, object]:
        return {"revision": self.revision, "type": self.type, "resource": self.document}


@dataclass(frozen=True, slots=True)
class JoinGrant:
    """What a consumed join token entitles to: an identity for this service."""

    service: str
    namespace: str
    expires: float


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """One row of the certificate ledger."""

    serial: str  # upper-case hex, no leading zeros
    identity: str
    proxy_id: str | None
    not_after: float
    revoked_at: float | None
    reason: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "serial": self.serial,
            "identity": self.identity,
            "proxy_id": self.proxy_id,
            "not_after": self.not_after,
            "revoked_at": self.revoked_at,
            "reason": self.reason,
        }


def _canonical(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def _stored(document_json: str, revision: int, generation: int) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(document_json)
    document["metadata"]["revision"] = revision
    document["metadata"]["generation"] = generation
    return document


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    """The SQLite store. Thread-safe; each method is one transaction."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
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

    @property
    def revision(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
        return int(row[0])

    @staticmethod
    def _next_revision(db: sqlite3.Connection) -> int:
        db.execute("UPDATE meta SET value = value + 1 WHERE key='revision'")
        row = db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
        return int(row[0])

    @staticmethod
    def _log(db: sqlite3.Connection, revision: int, kind: str, document: dict[str, Any]) -> None:
        db.execute(
            "INSERT INTO changes (revision, type, document) VALUES (?, ?, ?)",
            (revision, kind, json.dumps(document)),
        )
        db.execute("DELETE FROM changes WHERE revision <= ?", (revision - CHANGE_LOG_KEEP,))

    def apply(self, resources: Sequence[Resource]) -> list[ApplyResult]:
        """Create or update every resource in one transaction; report what happened to each."""
        results: list[ApplyResult] = []
        with self._transaction() as db:
            for resource in resources:
                key = resource.key
                document = resource.to_document()
                text = _canonical(document)
                row = db.execute(
                    "SELECT document, revision, generation FROM resources "
                    "WHERE kind=? AND namespace=? AND name=?",
                    (key.kind, key.namespace, key.name),
                ).fetchone()
                if row is not None and row[0] == text:
                    results.append(
                        ApplyResult(key.kind, key.namespace, key.name, "unchanged", int(row[1]))
                    )
                    continue
                revision = self._next_revision(db)
                generation = 1 if row is None else int(row[2]) + 1
                db.execute(
                    "INSERT INTO resources (kind, namespace, name, document, revision, generation)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, namespace, name) DO UPDATE SET"
                    " document=excluded.document, revision=excluded.revision,"
                    " generation=excluded.generation",
                    (key.kind, key.namespace, key.name, text, revision, generation),
                )
                self._log(db, revision, "applied", _stored(text, revision, generation))
                action: Action = "created" if row is None else "configured"
                results.append(ApplyResult(key.kind, key.namespace, key.name, action, revision))
        return results

    def get(self, key: ResourceKey) -> dict[str, Any] | None:
        """The stored document (with ``metadata.revision``/``generation``), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT document, revision, generation FROM resources "
                "WHERE kind=? AND namespace=? AND name=?",
                (key.kind, key.namespace, key.name),
            ).fetchone()
        return None if row is None else _stored(row[0], int(row[1]), int(row[2]))

    def list_resources(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """All documents of a kind (optionally of one namespace), by namespace then name."""
        query = "SELECT document, revision, generation FROM resources WHERE kind=?"
        params: tuple[str, ...] = (kind,)
        if namespace is not None:
            query += " AND namespace=?"
            params += (namespace,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY namespace, name", params).fetchall()
        return [_stored(row[0], int(row[1]), int(row[2])) for row in rows]

    def delete(self, key: ResourceKey) -> dict[str, Any] | None:
        """Delete one resource; return its last document (None if there was none)."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT document, generation FROM resources "
                "WHERE kind=? AND namespace=? AND name=?",
                (key.kind, key.namespace, key.name),
            ).fetchone()
            if row is None:
                return None
            revision = self._next_revision(db)
            db.execute(
                "DELETE FROM resources WHERE kind=? AND namespace=? AND name=?",
                (key.kind, key.namespace, key.name),
            )
            document = _stored(row[0], revision, int(row[1]))
            self._log(db, revision, "deleted", document)
        return document

    def changes_since(self, revision: int, limit: int = 1000) -> list[Change]:
        """Changes with a revision greater than ``revision``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT revision, type, document FROM changes WHERE revision > ? "
                "ORDER BY revision LIMIT ?",
                (revision, limit),
            ).fetchall()
        return [Change(int(r[0]), r[1], json.loads(r[2])) for r in rows]

    def create_join_token(
        self, service: str, namespace: str, ttl: float, now: float | None = None
    ) -> tuple[str, float]:
        """A new single-use token for (service, namespace): ``(token, expires unix time)``."""
        token = secrets.token_urlsafe(32)
        current = time.time() if now is None else now
        expires = current + ttl
        with self._transaction() as db:
            db.execute("DELETE FROM join_tokens WHERE expires < ?", (current,))
            db.execute(
                "INSERT INTO join_tokens (token_hash, service, namespace, expires) "
                "VALUES (?, ?, ?, ?)",
                (_hash_token(token), service, namespace, expires),
            )
        return token, expires

    def consume_join_token(self, token: str, now: float | None = None) -> JoinGrant | None:
        """Use a token once: its grant if it was unused and unexpired, else None."""
        current = time.time() if now is None else now
        digest = _hash_token(token)
        with self._transaction() as db:
            row = db.execute(
                "SELECT service, namespace, expires FROM join_tokens "
                "WHERE token_hash=? AND used=0 AND expires >= ?",
                (digest, current),
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE join_tokens SET used=1 WHERE token_hash=?", (digest,))
        return JoinGrant(row[0], row[1], float(row[2]))

    # ------------------------------------------------------------ certificate ledger
    def record_certificate(
        self, serial: str, identity: str, not_after: float, proxy_id: str | None = None
    ) -> None:
        """Note an issued (or presented) certificate; the proxy is kept once known. Rows of
        certificates that expired are dropped here: an expired one is refused anyway."""
        with self._transaction() as db:
            db.execute("DELETE FROM certificates WHERE not_after < ?", (time.time(),))
            db.execute(
                "INSERT INTO certificates (serial, identity, proxy_id, not_after) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (serial) DO UPDATE SET "
                "proxy_id=coalesce(excluded.proxy_id, certificates.proxy_id)",
                (serial, identity, proxy_id, not_after),
            )

    def revoke_certificates(
        self, *, reason: str, proxy_id: str | None = None, identity: str | None = None
    ) -> list[str]:
        """Revoke every unexpired, unrevoked certificate of a proxy or of an identity; return
        the serials revoked now."""
        column, value = ("proxy_id", proxy_id) if proxy_id is not None else ("identity", identity)
        if value is None:
            raise ValueError("revoke_certificates needs proxy_id or identity")
        now = time.time()
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT serial FROM certificates WHERE {column}=? AND revoked_at IS NULL "
                "AND not_after >= ?",
                (value, now),
            ).fetchall()
            serials = [str(row[0]) for row in rows]
            db.executemany(
                "UPDATE certificates SET revoked_at=?, reason=? WHERE serial=?",
                [(now, reason, serial) for serial in serials],
            )
        return serials

    def has_certificates_of(self, proxy_id: str) -> bool:
        """Whether the ledger holds an unexpired certificate of ``proxy_id``."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM certificates WHERE proxy_id=? AND not_after >= ? LIMIT 1",
                (proxy_id, time.time()),
            ).fetchone()
        return row is not None

    def certificates(self, *, revoked_only: bool = False) -> list[IssuedCertificate]:
        """Unexpired certificates of the ledger (only revoked ones when asked), oldest expiry
        first."""
        query = (
            "SELECT serial, identity, proxy_id, not_after, revoked_at, reason FROM certificates "
            "WHERE not_after >= ?"
        )
        if revoked_only:
            query += " AND revoked_at IS NOT NULL"
        with self._lock:
            rows = self._db.execute(query + " ORDER BY not_after, serial", (time.time(),))
            return [IssuedCertificate(*row) for row in rows.fetchall()]

    # ------------------------------------------------------------ registered proxies
    def save_proxies(self, records: Sequence[tuple[str, str]], deleted: Sequence[str]) -> None:
        """Upsert ``(proxy_id, JSON record)`` rows and delete ``deleted``, in one transaction."""
        now = time.time()
        with self._transaction() as db:
            db.executemany("DELETE FROM proxies WHERE proxy_id=?", [(p,) for p in deleted])
            db.executemany(
                "INSERT INTO proxies (proxy_id, record, seen) VALUES (?, ?, ?) "
                "ON CONFLICT (proxy_id) DO UPDATE SET record=excluded.record, seen=excluded.seen",
                [(proxy_id, record, now) for proxy_id, record in records],
            )

    def load_proxies(self) -> list[tuple[str, str, float]]:
        """Every saved ``(proxy_id, JSON record, when saved)``, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT proxy_id, record, seen FROM proxies ORDER BY seen")
            return [(str(r[0]), str(r[1]), float(r[2])) for r in rows.fetchall()]
