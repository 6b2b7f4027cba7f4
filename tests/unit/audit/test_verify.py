"""``gossamer.audit_verify`` against a real chain (written by the spool) and checkpoints signed
by the real signer child with a leaf of a real mesh CA: an intact chain has no problem, and
each kind of tampering is named where it is."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from gossamer.audit_chain import checkpoint_payload, record_hash
from gossamer.audit_verify import StoredCheckpoint, StoredRecord, verify_chain
from gossamer.control.ca import CertificateAuthority
from gossamer.identity.signer import sign
from gossamer.identity.spiffe import SpiffeId
from gossamer.proxy.observe.audit_spool import AuditSpool, segments

ORDERS = SpiffeId.parse("spiffe://gossamer.local/ns/default/sa/orders")


class Chain:
    def __init__(self, tmp: Path, n: int) -> None:
        spool = AuditSpool(tmp / "spool", limit=1 << 20, block=True)
        for i in range(n):
            spool.append({"time": "2026-12-07T00:00:00.000Z", "namespace": "default",
                          "service": "orders", "path": f"/o/{i}", "status": 200})  # fmt: skip
        spool.close()
        self.id = spool.chain
        self.entries = {json.loads(line)["seq"]: line.decode()
                        for segment in segments(tmp / "spool")
                        for line in segment.read_bytes().splitlines()}  # fmt: skip
        ca = CertificateAuthority.load_or_create(tmp / "cp")
        cert, key = ca.issue_keypair(ORDERS, timedelta(hours=1))
        (tmp / "leaf.crt").write_bytes(cert)
        (tmp / "leaf.key").write_bytes(key)
        self.roots = x509.load_pem_x509_certificates((tmp / "cp" / "ca" / "root.crt").read_bytes())
        self.tmp = tmp

    def checkpoint(self, seq: int, *, now: float = 1.8e9, key: str = "leaf.key") -> str:
        head = json.loads(self.entries[seq])["hash"]
        payload = checkpoint_payload(self.id, seq, head, now)
        signature = asyncio.run(sign(self.tmp / key, payload))
        return json.dumps({"chain": self.id, "seq": seq, "head": head, "time": now,
                           "certificate": (self.tmp / "leaf.crt").read_text(),
                           "signature": signature})  # fmt: skip

    def records(self) -> list[StoredRecord]:
        return [StoredRecord(seq, entry) for seq, entry in sorted(self.entries.items())]

    def problems(self, checkpoints: list[str]) -> list[tuple[int, str]]:
        stored = [StoredCheckpoint(json.loads(c)["seq"], c) for c in checkpoints]
        return [(p.seq, p.kind) for p in verify_chain(self.id, self.records(), stored, self.roots)]

    def rewrite(self, seq: int, **changes: object) -> dict[str, object]:
        record: dict[str, object] = json.loads(self.entries[seq])
        record.update(changes)
        self.entries[seq] = json.dumps(record, sort_keys=True, separators=(",", ":"))
        return record


@pytest.fixture
def chain(tmp_path: Path) -> Chain:
    return Chain(tmp_path, 10)


def test_an_intact_chain_with_a_signed_checkpoint_has_no_problem(chain: Chain) -> None:
    assert chain.problems([chain.checkpoint(10, now=time.time())]) == []


def test_an_edited_record_is_named(chain: Chain) -> None:
    chain.rewrite(4, status=500)
    assert chain.problems([]) == [(4, "edited")]


def test_an_edited_record_with_its_hash_made_again_breaks_the_next_link(chain: Chain) -> None:
    record = chain.rewrite(4, status=500)
    chain.rewrite(4, hash=record_hash(record))
    assert chain.problems([]) == [(5, "broken-link")]


def test_the_whole_tail_rewritten_is_caught_by_the_checkpoint(chain: Chain) -> None:
    checkpoint = chain.checkpoint(10, now=time.time())
    prev = json.loads(chain.entries[3])["hash"]
    for seq in range(4, 11):  # every hash from 4 on made again: links hold
        record = chain.rewrite(seq, prev=prev, status=500 if seq == 4 else 200)
        prev = chain.rewrite(seq, hash=record_hash(record))["hash"]
    assert chain.problems([checkpoint]) == [(10, "edited")]


def test_a_deleted_record_is_named(chain: Chain) -> None:
    del chain.entries[6]
    assert chain.problems([]) == [(7, "deleted")]


def test_records_deleted_after_a_checkpoint_are_named(chain: Chain) -> None:
    checkpoint = chain.checkpoint(10, now=time.time())
    del chain.entries[10], chain.entries[9]
    assert chain.problems([checkpoint]) == [(10, "deleted")]


def test_reordered_records_are_named(chain: Chain) -> None:
    chain.entries[3], chain.entries[4] = chain.entries[4], chain.entries[3]
    found = chain.problems([])
    assert (3, "moved") in found and (4, "moved") in found


def test_a_forged_checkpoint_is_refused(chain: Chain, tmp_path: Path) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    cert, key = other.issue_keypair(ORDERS, timedelta(hours=1))
    (tmp_path / "forged.key").write_bytes(key)
    forged = json.loads(chain.checkpoint(10, now=time.time(), key="forged.key"))
    assert chain.problems([json.dumps(forged)]) == [(10, "bad-checkpoint")]  # wrong key
    forged["certificate"] = cert.decode()
    resigned = json.loads(chain.checkpoint(10, now=time.time(), key="forged.key"))
    forged["signature"] = resigned["signature"]
    assert chain.problems([json.dumps(forged)]) == [(10, "bad-checkpoint")]  # another CA


def test_a_sealed_line_is_the_canonical_record_with_its_hash_last() -> None:
    """``seal`` encodes once: the line is the canonical JSON the hash covers with ``hash``
    added as the last member; parsed back, it verifies as any stored record does."""
    from gossamer.audit_chain import GENESIS, canonical, record_hash, seal

    record = {"chain": "c", "seq": 1, "prev": GENESIS, "path": "/caf\u00e9?q=\"x\"",
              "status": 200, "audit_policies": ["default/a"], "subject": None}  # fmt: skip
    line = seal(dict(record))
    parsed = json.loads(line)
    assert line.endswith(b'"}\n') and line.isascii()
    assert line == canonical(record)[:-1] + b',"hash":"%b"}\n' % parsed["hash"].encode()
    assert record_hash(parsed) == parsed["hash"]
    assert {k: v for k, v in parsed.items() if k != "hash"} == record
