"""The SQLite store: transactions, revisions, change log, join tokens, durability."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gossamer.config import Resource, ResourceKey, Service, validate_documents
from gossamer.control.store import Store


def svc(name: str, port: int = 80) -> Resource:
    (resource,) = validate_documents(
        [
            {
                "apiVersion": "gossamer.dev/v1alpha1",
                "kind": "Service",
                "metadata": {"name": name},
                "spec": {"ports": [{"port": port}]},
            }
        ]
    )
    return resource


class Exploding(Service):
    """A resource whose serialisation fails, to break an apply half-way."""

    def to_document(self) -> dict[str, Any]:
        raise RuntimeError("boom")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "store.db")
    yield opened
    opened.close()


def key(name: str) -> ResourceKey:
    return ResourceKey("Service", "default", name)


def test_apply_reports_created_configured_unchanged(store: Store) -> None:
    """The same name is created, then configured on change, then unchanged."""
    assert store.apply([svc("a")])[0].action == "created"
    assert store.apply([svc("a", 81)])[0].action == "configured"
    result = store.apply([svc("a", 81)])[0]
    assert result.action == "unchanged"
    assert result.revision == 2


def test_revision_grows_per_change_and_generation_per_resource(store: Store) -> None:
    """Each change takes the next global revision; generation counts a resource's changes."""
    store.apply([svc("a"), svc("b")])
    store.apply([svc("a", 81)])
    doc = store.get(key("a"))
    assert doc is not None
    assert (doc["metadata"]["revision"], doc["metadata"]["generation"]) == (3, 2)
    assert store.revision == 3


def test_apply_is_all_or_nothing(store: Store) -> None:
    """A failure in the middle of an apply leaves nothing of it behind."""
    bad = Exploding.model_validate(svc("bad").to_document())
    with pytest.raises(RuntimeError):
        store.apply([svc("good"), bad])
    assert store.get(key("good")) is None
    assert store.revision == 0
    assert store.changes_since(0) == []


def test_list_filters_by_namespace(store: Store) -> None:
    """list_resources returns a kind's documents, optionally of one namespace."""
    other = Service.model_validate(
        {**svc("z").to_document(), "metadata": {"name": "z", "namespace": "prod"}}
    )
    store.apply([svc("a"), other])
    assert [d["metadata"]["name"] for d in store.list_resources("Service")] == ["a", "z"]
    assert [d["metadata"]["name"] for d in store.list_resources("Service", "prod")] == ["z"]
    assert store.list_resources("MeshConfig") == []


def test_delete_returns_document_and_logs_change(store: Store) -> None:
    """Deleting returns the last document and records a 'deleted' change."""
    store.apply([svc("a")])
    deleted = store.delete(key("a"))
    assert deleted is not None and deleted["metadata"]["name"] == "a"
    assert store.get(key("a")) is None
    assert store.delete(key("a")) is None
    assert [(c.revision, c.type) for c in store.changes_since(0)] == [
        (1, "applied"),
        (2, "deleted"),
    ]


def test_changes_since_skips_older_and_unchanged(store: Store) -> None:
    """changes_since(rev) lists only later changes; unchanged applies log nothing."""
    store.apply([svc("a")])
    store.apply([svc("a")])
    store.apply([svc("b")])
    changes = store.changes_since(1)
    assert [(c.revision, c.document["metadata"]["name"]) for c in changes] == [(2, "b")]


def test_survives_reopen(tmp_path: Path) -> None:
    """Closing and reopening the file keeps resources, revision and tokens."""
    first = Store(tmp_path / "store.db")
    first.apply([svc("a"), svc("b")])
    token, _ = first.create_join_token("a", "default", 60)
    first.close()
    second = Store(tmp_path / "store.db")
    try:
        assert second.revision == 2
        assert second.get(key("b")) is not None
        assert second.consume_join_token(token) is not None
    finally:
        second.close()


def test_uses_wal_journal(tmp_path: Path) -> None:
    """The database is in WAL mode."""
    Store(tmp_path / "store.db").close()
    with sqlite3.connect(tmp_path / "store.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_join_token_is_single_use(store: Store) -> None:
    """A token grants its service once."""
    token, _ = store.create_join_token("web", "shop", 60)
    grant = store.consume_join_token(token)
    assert grant is not None and (grant.service, grant.namespace) == ("web", "shop")
    assert store.consume_join_token(token) is None


def test_join_token_expires(store: Store) -> None:
    """A token past its expiry is refused."""
    token, expires = store.create_join_token("web", "default", 10, now=1000.0)
    assert expires == 1010.0
    assert store.consume_join_token(token, now=1011.0) is None


def test_unknown_join_token_is_refused(store: Store) -> None:
    """A token that was never issued grants nothing."""
    assert store.consume_join_token("made-up") is None


def test_join_token_is_stored_only_as_hash(tmp_path: Path) -> None:
    """The token text never reaches the database file."""
    opened = Store(tmp_path / "store.db")
    token, _ = opened.create_join_token("web", "default", 60)
    opened.close()
    with sqlite3.connect(tmp_path / "store.db") as db:
        rows = db.execute("SELECT token_hash FROM join_tokens").fetchall()
    assert rows and all(token not in row[0] for row in rows)
    assert token.encode() not in (tmp_path / "store.db").read_bytes()
