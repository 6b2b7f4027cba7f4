"""The control plane's audit store (``control/audit_store.py``) on a real SQLite file: each
(chain, seq) kept once, the acknowledgement is the highest seq held, a chain belongs to the
identity that sent it first, a sidecar cannot write another workload's records, queries."""

from __future__ import annotations

from pathlib import Path

import pytest

from gossamer.control.audit_store import AuditFilter, AuditRefused, AuditStore, Sender
from gossamer.proxy.observe.audit_spool import AuditSpool, segments

ORDERS = Sender("default", "orders", "spiffe://gossamer.local/ns/default/sa/orders", "orders-1")


def spool_lines(tmp: Path, n: int, service: str = "orders") -> tuple[str, list[str]]:
    spool = AuditSpool(tmp / f"spool-{service}", limit=1 << 20, block=True)
    for i in range(n):
        spool.append({"time": f"2026-12-07T00:00:{i:02d}.000Z", "namespace": "default",
                      "service": service,
                      "caller": f"spiffe://gossamer.local/ns/default/sa/c{i % 2}",
                      "subject": None, "method": "POST" if i % 2 else "GET",
                      "path": f"/o/{i}", "status": 200 if i < 8 else 503,
                      "decision": "allow"})  # fmt: skip
    spool.close()
    lines = [line.decode() for segment in segments(spool.directory)
             for line in segment.read_bytes().splitlines()]  # fmt: skip
    return spool.chain, lines


def test_a_batch_sent_twice_is_stored_once(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.db")
    chain, lines = spool_lines(tmp_path, 10)
    assert store.receive({"chain": chain, "records": lines[:6]}, ORDERS) == (chain, 6)
    assert store.receive({"chain": chain, "records": lines[3:]}, ORDERS) == (chain, 10)
    assert store.receive({"chain": chain, "records": lines}, ORDERS) == (chain, 10)
    (listed,) = store.chains()
    assert (listed["records"], listed["last_seq"], listed["identity"]) == (10, 10, ORDERS.identity)
    assert [r["seq"] for r in store.query(AuditFilter())] == list(range(1, 11))


def test_a_chain_belongs_to_its_first_sender_and_records_to_their_workload(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.db")
    chain, lines = spool_lines(tmp_path, 3)
    store.receive({"chain": chain, "records": lines[:1]}, ORDERS)
    thief = Sender("default", "orders", "spiffe://gossamer.local/ns/default/sa/other", "x-1")
    with pytest.raises(AuditRefused, match="belongs to"):
        store.receive({"chain": chain, "records": lines[1:]}, thief)
    web = Sender("default", "web", "spiffe://gossamer.local/ns/default/sa/web", "web-1")
    other_chain, other_lines = spool_lines(tmp_path, 2)
    with pytest.raises(AuditRefused, match="another workload"):
        store.receive({"chain": other_chain, "records": other_lines}, web)
    with pytest.raises(AuditRefused, match="records\\[0\\]"):
        store.receive({"chain": chain, "records": ["{not json"]}, ORDERS)
    assert store.receive({"chain": chain, "records": []}, ORDERS) == (chain, 1)


def test_queries_filter_on_the_record_fields(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.db")
    chain, lines = spool_lines(tmp_path, 10)
    store.receive({"chain": chain, "records": lines}, ORDERS)
    assert len(store.query(AuditFilter(status=503))) == 2
    assert len(store.query(AuditFilter(method="POST"))) == 5
    caller = "spiffe://gossamer.local/ns/default/sa/c1"
    assert {r["caller"] for r in store.query(AuditFilter(caller=caller))} == {caller}
    since = store.query(AuditFilter(since="2026-12-07T00:00:07.000Z"))
    assert [r["seq"] for r in since] == [8, 9, 10]
    assert len(store.query(AuditFilter(limit=3))) == 3
    assert store.query(AuditFilter(service="payments")) == []
