"""The audit store's retention (``AuditStore.prune``) with ``gossamer.audit_verify``: records
go only up to a signed checkpoint received before the cut-off, that checkpoint anchors what
remains, and the chain still verifies; a record removed any other way is still named, and an
anchor that does not hold is refused. A real chain (written by the spool), checkpoints signed
by the real signer child, a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from gossamer.audit_verify import StoredCheckpoint, StoredRecord, verify_chain
from gossamer.config.meshconfig import AuditSettings
from gossamer.control.audit_store import AuditFilter, AuditStore, Pruned, Sender
from tests.unit.audit.test_verify import Chain

ORDERS = Sender("default", "orders", "spiffe://gossamer.local/ns/default/sa/orders", "orders-1")


class Stored:
    """A store holding one chain of 10 records, received in two batches, each batch with a
    checkpoint over its last record; ``between`` is a time after the first batch arrived and
    before the second."""

    def __init__(self, tmp: Path) -> None:
        self.chain = Chain(tmp, 10)
        self.store = AuditStore(tmp / "audit.db")
        self.db_path = tmp / "audit.db"
        lines = [self.chain.entries[seq] for seq in range(1, 11)]
        self.send(lines[:5], 5)
        time.sleep(0.05)
        self.between = time.time()
        time.sleep(0.05)
        self.send(lines[5:], 10)

    def send(self, lines: list[str], checkpoint: int | None) -> None:
        message: dict[str, object] = {"chain": self.chain.id, "records": lines}
        if checkpoint is not None:
            message["checkpoint"] = json.loads(self.chain.checkpoint(checkpoint, now=time.time()))
        self.store.receive(message, ORDERS)

    def problems(self) -> list[tuple[int, str]]:
        page = self.store.entries(self.chain.id, 0, 1000)
        anchor = page["anchor"]
        found = verify_chain(
            self.chain.id,
            [StoredRecord(r["seq"], r["entry"]) for r in page["records"]],
            [StoredCheckpoint(c["seq"], c["entry"]) for c in page["checkpoints"]],
            self.chain.roots,
            StoredCheckpoint(anchor["seq"], anchor["entry"]) if anchor else None,
        )
        return [(p.seq, p.kind) for p in found]

    def seqs(self) -> list[int]:
        return [int(r["seq"]) for r in self.store.query(AuditFilter())]


@pytest.fixture
def stored(tmp_path: Path) -> Stored:
    return Stored(tmp_path)


def test_records_go_up_to_the_last_checkpoint_before_the_cut_off_and_the_rest_verifies(
    stored: Stored,
) -> None:
    assert stored.problems() == []
    assert stored.store.prune(stored.between) == Pruned(chains=1, records=5, checkpoints=0)
    assert stored.seqs() == [6, 7, 8, 9, 10]
    page = stored.store.entries(stored.chain.id, 0, 1000)
    assert page["anchor"]["seq"] == 5
    assert [c["seq"] for c in page["checkpoints"]] == [5, 10]
    (listed,) = stored.store.chains()
    assert (listed["records"], listed["pruned_through"]) == (5, 5)
    assert stored.problems() == []  # from the anchor on: whole
    assert stored.store.prune(stored.between) == Pruned(0, 0, 0)  # nothing more is due


def test_a_chain_pruned_to_its_last_checkpoint_keeps_only_the_anchor(stored: Stored) -> None:
    assert stored.store.prune(time.time() + 1) == Pruned(chains=1, records=10, checkpoints=1)
    assert stored.seqs() == []
    assert stored.problems() == []
    # A batch sent again (its ack was lost) is acknowledged and not stored again.
    entries = stored.chain.entries
    again = {"chain": stored.chain.id, "records": [entries[9], entries[10]],
             "checkpoint": json.loads(stored.chain.checkpoint(10, now=time.time()))}  # fmt: skip
    assert stored.store.receive(again, ORDERS) == (stored.chain.id, 10)
    assert stored.seqs() == []
    assert stored.problems() == []


def test_records_after_the_last_checkpoint_stay_whatever_their_age(tmp_path: Path) -> None:
    chain = Chain(tmp_path, 6)
    store = AuditStore(tmp_path / "audit.db")
    lines = [chain.entries[seq] for seq in range(1, 7)]
    checkpoint = json.loads(chain.checkpoint(3, now=time.time()))
    store.receive({"chain": chain.id, "records": lines[:3], "checkpoint": checkpoint}, ORDERS)
    store.receive({"chain": chain.id, "records": lines[3:]}, ORDERS)
    assert store.prune(time.time() + 1) == Pruned(chains=1, records=3, checkpoints=0)
    assert [int(r["seq"]) for r in store.query(AuditFilter())] == [4, 5, 6]


def test_a_chain_without_a_checkpoint_is_never_pruned(tmp_path: Path) -> None:
    chain = Chain(tmp_path, 4)
    store = AuditStore(tmp_path / "audit.db")
    store.receive({"chain": chain.id, "records": list(chain.entries.values())}, ORDERS)
    assert store.prune(time.time() + 1) == Pruned(0, 0, 0)
    assert len(store.query(AuditFilter())) == 4


def test_after_pruning_a_deleted_or_edited_record_is_still_named(stored: Stored) -> None:
    stored.store.prune(stored.between)
    with sqlite3.connect(stored.db_path) as db:
        db.execute("DELETE FROM records WHERE seq = 7")
        db.execute("UPDATE records SET entry = replace(entry, '\"status\":200', "
                   "'\"status\":204') WHERE seq = 9")  # fmt: skip
    assert stored.problems() == [(8, "deleted"), (9, "edited")]


def test_records_removed_beyond_the_anchor_read_as_deleted(stored: Stored) -> None:
    """Whoever holds the store cannot pass off removing records as retention: without the
    anchor (or with one moved back to an older checkpoint) the gap shows."""
    stored.store.prune(stored.between)
    with sqlite3.connect(stored.db_path) as db:
        db.execute("DELETE FROM anchors")
    assert stored.problems() == [(6, "deleted")]


def test_an_anchor_that_does_not_hold_is_refused(stored: Stored, tmp_path: Path) -> None:
    stored.store.prune(stored.between)
    forged = json.loads(stored.chain.checkpoint(5, now=time.time()))
    forged["head"] = "f" * 64  # a head the signature does not cover
    with sqlite3.connect(stored.db_path) as db:
        db.execute("UPDATE anchors SET entry = ?", (json.dumps(forged),))
    assert stored.problems() == [(5, "bad-checkpoint"), (6, "deleted")]


def test_retention_is_a_duration_or_forever() -> None:
    assert AuditSettings().retention_seconds() == 90 * 86400.0
    assert AuditSettings.model_validate({"retention": "12h"}).retention_seconds() == 43200.0
    assert AuditSettings.model_validate({"retention": "forever"}).retention_seconds() is None
    for bad in ("a while", "0s", "-1d"):
        with pytest.raises(ValidationError) as info:
            AuditSettings.model_validate({"retention": bad})
        assert info.value.errors()[0]["loc"] == ("retention",)
