"""Verifying audit chains: every record whole, in place and in order, every checkpoint signed.

``verify_chain`` walks one chain's stored records in ``seq`` order (``gossamer.audit_chain``
says what each hash covers) and its checkpoints, and names each problem where it is:

- ``unreadable``: a stored record is not a JSON object;
- ``moved``: the record stored as ``seq`` N says it is another one (records were reordered);
- ``edited``: a record's content does not match its hash;
- ``deleted``: ``seq`` jumps (the records between are gone), or records after the last one
  stored were signed by a checkpoint;
- ``broken-link``: a record's ``prev`` is not the hash of the record before it (a record was
  replaced by one made to fit, or records were swapped with their hashes made again);
- ``bad-checkpoint``: a signature that does not verify, a certificate that does not chain to
  the mesh's roots, or a checkpoint whose hash is not the stored record's.

A chain the store's retention pruned starts at its *anchor*: the signed checkpoint up to which
records were removed. The anchor's signature is checked like any checkpoint's, and the walk
starts after it, from the hash it signed; a bad anchor is a ``bad-checkpoint`` and the walk
then starts at record 1 (so the removed records read as deleted).

Used by ``gossamer audit verify``, which fetches the records, the checkpoints and the mesh's
roots (current and retired) and checks them here, outside the store. Imports ``cryptography``:
never loaded by the sidecar.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from gossamer.audit_chain import GENESIS, checkpoint_payload, record_hash

__all__ = ["Problem", "StoredCheckpoint", "StoredRecord", "verify_chain", "verify_signature"]


@dataclass(frozen=True, slots=True)
class StoredRecord:
    seq: int  # where the store keeps it
    entry: str  # the record as stored (canonical JSON)


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    seq: int
    entry: str


@dataclass(frozen=True, slots=True)
class Problem:
    chain: str
    seq: int
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"chain {self.chain} record {self.seq}: {self.kind}: {self.detail}"


def _parse(entry: str) -> dict[str, Any] | None:
    try:
        parsed = json.loads(entry)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _walk(
    chain: str, records: Sequence[StoredRecord], start: int = 1, head: str = GENESIS
) -> tuple[list[Problem], dict[int, str]]:
    """The records' own problems from ``start`` on (``head``: the hash before it), and each
    stored record's claimed hash by seq."""
    problems: list[Problem] = []
    hashes_by_seq: dict[int, str] = {}
    expected, prev_hash = start, head
    for stored in sorted(records, key=lambda r: r.seq):
        seq = stored.seq
        if seq < start:
            problems.append(Problem(chain, seq, "moved", "a record from before the chain's "
                                    "retention anchor is stored"))  # fmt: skip
            continue
        record = _parse(stored.entry)
        if record is None:
            problems.append(Problem(chain, seq, "unreadable", "not a JSON object"))
            expected, prev_hash = seq + 1, ""
            continue
        if seq > expected:
            gone = f"record {expected}" if seq == expected + 1 else f"records {expected}-{seq - 1}"
            problems.append(Problem(chain, seq, "deleted", f"{gone} missing before it"))
            prev_hash = ""  # no link to check across the gap
        claimed = record.get("seq")
        if claimed != seq:
            problems.append(Problem(chain, seq, "moved", f"the record stored here says it is "
                                    f"record {claimed!r}: records were reordered"))  # fmt: skip
        if record.get("chain") != chain:
            problems.append(Problem(chain, seq, "moved", f"it names chain {record.get('chain')!r}"))
        stated = str(record.get("hash", ""))
        if record_hash(record) != stated:
            problems.append(Problem(chain, seq, "edited", "its content does not match its hash"))
        if prev_hash and record.get("prev") != prev_hash:
            problems.append(Problem(chain, seq, "broken-link",
                                    f"its prev is not the hash of record {seq - 1}"))  # fmt: skip
        hashes_by_seq[seq] = stated
        expected, prev_hash = seq + 1, stated
    return problems, hashes_by_seq


def _certificates(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


def _chains_to(chain: list[x509.Certificate], roots: Sequence[x509.Certificate],
               when: datetime) -> bool:  # fmt: skip
    """Whether each certificate of ``chain`` is signed by the next and the last by a root, all
    valid at ``when``."""
    for cert in chain:
        if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
            return False
    try:
        for child, parent in itertools.pairwise(chain):
            child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    last = chain[-1]
    for root in roots:
        if last == root:
            return True
        try:
            last.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def verify_signature(checkpoint: dict[str, Any], roots: Sequence[x509.Certificate]) -> str | None:
    """Why ``checkpoint``'s signature does not hold, or None when it does."""
    try:
        chain = _certificates(str(checkpoint["certificate"]))
        signature = base64.b64decode(str(checkpoint["signature"]), validate=True)
        payload = checkpoint_payload(
            str(checkpoint["chain"]), int(checkpoint["seq"]),
            str(checkpoint["head"]), float(checkpoint["time"]),
        )  # fmt: skip
    except (KeyError, ValueError, TypeError, binascii.Error) as exc:
        return f"malformed: {exc}"
    if not chain:
        return "no certificate"
    when = datetime.fromtimestamp(float(checkpoint["time"]), UTC)
    if not _chains_to(chain, roots, when):
        return "its certificate does not chain to the mesh's roots"
    key = chain[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return "not an EC key"
    try:
        key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "the signature does not verify"
    return None


def _anchor(
    chain: str, anchor: StoredCheckpoint | None, roots: Sequence[x509.Certificate]
) -> tuple[list[Problem], int, str]:
    """Where the walk starts: (the anchor's problems, the first seq, the hash before it)."""
    if anchor is None:
        return [], 1, GENESIS
    checkpoint = _parse(anchor.entry)
    why = "unreadable" if checkpoint is None else verify_signature(checkpoint, roots)
    if why is None and checkpoint is not None:
        if checkpoint.get("chain") != chain or checkpoint.get("seq") != anchor.seq:
            why = "it is not a checkpoint of this chain at this seq"
        else:
            return [], anchor.seq + 1, str(checkpoint["head"])
    problem = Problem(chain, anchor.seq, "bad-checkpoint", f"the retention anchor: {why}")
    return [problem], 1, GENESIS


def verify_chain(
    chain: str,
    records: Sequence[StoredRecord],
    checkpoints: Iterable[StoredCheckpoint],
    roots: Sequence[x509.Certificate],
    anchor: StoredCheckpoint | None = None,
) -> list[Problem]:
    """Every problem of one chain (an empty list: the chain is whole, from its retention
    ``anchor`` on when it has one)."""
    problems, start, head = _anchor(chain, anchor, roots)
    walked, hashes_by_seq = _walk(chain, records, start, head)
    problems += walked
    last = max(hashes_by_seq, default=start - 1)
    for stored in sorted(checkpoints, key=lambda c: c.seq):
        checkpoint = _parse(stored.entry)
        if checkpoint is None:
            problems.append(Problem(chain, stored.seq, "bad-checkpoint", "unreadable"))
            continue
        why = verify_signature(checkpoint, roots)
        if why is not None:
            problems.append(Problem(chain, stored.seq, "bad-checkpoint", why))
            continue
        seq = int(checkpoint["seq"])
        if seq > last:
            problems.append(Problem(chain, seq, "deleted", f"a checkpoint signed records up to "
                                    f"{seq}; the store ends at {last}"))  # fmt: skip
        elif seq in hashes_by_seq and hashes_by_seq[seq] != checkpoint["head"]:
            problems.append(Problem(chain, seq, "edited",
                                    "the record differs from the one a checkpoint signed"))
    return problems
