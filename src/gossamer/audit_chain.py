"""The audit log's chain format: how a record is sealed, and how a checkpoint is signed.

Shared by the sidecar (which writes and ships records), the control plane (which stores them)
and the CLI (which verifies them): one definition of the bytes a hash or a signature covers
(docs/internals.md §15). No I/O here, and nothing that needs ``cryptography`` (the sidecar
never loads it; ``gossamer.audit_verify`` does the signature checks).

A chain is one writer's sequence of records (a sidecar process, or one worker of a
multi-process sidecar), named by a random ``chain`` id kept in its spool directory. Record
``seq`` (1, 2, ...) carries ``prev``, the ``hash`` of record ``seq - 1`` (``GENESIS`` for the
first), and its own ``hash``::

    hash = sha256(prev + "\\n" + canonical(record without "hash")).hexdigest()

where ``canonical`` is JSON with sorted keys, no spaces and ASCII only. Editing a record breaks
its hash; deleting one leaves a gap in ``seq`` and a ``prev`` that names a missing hash;
reordering breaks the ``prev`` links. A checkpoint is the sidecar's signature (its workload
key, its certificate chain enclosed) over ``checkpoint_payload``: the chain, a ``seq`` and the
hash of that record at a time, so records up to ``seq`` cannot be removed or rewritten without
the sidecar's key, even by whoever holds the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from gossamer.json_lines import encode

__all__ = [
    "GENESIS",
    "canonical",
    "checkpoint_payload",
    "record_hash",
    "seal",
]

GENESIS = "0" * 64  # the ``prev`` of a chain's first record


def canonical(document: Mapping[str, Any]) -> bytes:
    """The one byte form of a JSON document that hashes and signatures cover (the same
    bytes with or without the native encoder: ``gossamer.json_lines``)."""
    return encode(document, ascii=True, sort_keys=True)


def record_hash(record: Mapping[str, Any]) -> str:
    """The hash ``record`` must carry: over its ``prev`` and everything but ``hash``."""
    body = {key: value for key, value in record.items() if key != "hash"}
    prev = str(record.get("prev", ""))
    return hashlib.sha256(prev.encode() + b"\n" + canonical(body)).hexdigest()


def seal(record: dict[str, Any]) -> bytes:
    """Set ``record["hash"]`` and return the record as one spool line: the canonical JSON the
    hash covers (the record without ``hash``) with ``"hash"`` added as its last member, and
    LF (one encoding per record; readers parse the line, so the member order is free). The
    sidecar's own records are rows, sealed natively to the same line (``json_lines.Rows``)."""
    body = canonical(record)
    digest = hashlib.sha256(str(record["prev"]).encode() + b"\n" + body).hexdigest()
    record["hash"] = digest
    return body[:-1] + b',"hash":"' + digest.encode() + b'"}\n'


def checkpoint_payload(chain: str, seq: int, head: str, time: float) -> bytes:
    """What a checkpoint's signature covers."""
    return canonical({"chain": chain, "head": head, "seq": seq, "time": time})
