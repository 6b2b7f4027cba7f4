"""The audit spool (``proxy/observe/audit_spool.py``) and the shipper's reading of it
(``proxy/process/audit_shipper.py``), on real files: the chain's links, a restart that
continues the chain (a torn line cut, an empty newest segment), the drop policy's gap, the
segment names that keep the head, and what the shipper reads and deletes."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer.audit_chain import GENESIS, record_hash, seal
from gossamer.json_lines import OMIT
from gossamer.proxy.observe import audit_spool
from gossamer.proxy.observe.audit_spool import (
    RECORD_MEMBERS,
    AuditSpool,
    record_dict,
    segment_start,
    segments,
)
from gossamer.proxy.process.audit_shipper import AuditShipper, delete_acknowledged, read_after


def fields(i: int) -> dict[str, object]:
    return {"time": f"2026-12-07T00:00:{i % 60:02d}.000Z", "namespace": "default",
            "service": "orders", "method": "POST", "path": f"/orders/{i}",
            "status": 200}  # fmt: skip


def lines(directory: Path) -> list[dict[str, object]]:
    out = []
    for segment in segments(directory):
        out += [json.loads(line) for line in segment.read_bytes().splitlines()]
    return out


def test_records_are_chained_and_each_hash_covers_its_content(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path, limit=1 << 20, block=True)
    for i in range(5):
        assert spool.append(fields(i))
    spool.close()
    records = lines(tmp_path)
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["prev"] == GENESIS
    for before, after in itertools.pairwise(records):
        assert after["prev"] == before["hash"]
    assert all(record_hash(r) == r["hash"] for r in records)
    assert len({r["chain"] for r in records}) == 1


def test_a_restart_continues_the_chain_and_cuts_a_torn_line(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path, limit=1 << 20, block=True)
    for i in range(3):
        spool.append(fields(i))
    spool.close()
    (newest,) = segments(tmp_path)
    with newest.open("ab") as file:  # a kill in the middle of a write
        file.write(b'{"chain":"x","seq":4,"prev"')
    again = AuditSpool(tmp_path, limit=1 << 20, block=True)
    assert again.seq == 3
    again.append(fields(3))
    again.close()
    records = lines(tmp_path)
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert records[3]["prev"] == records[2]["hash"]
    assert len({r["chain"] for r in records}) == 1


def test_segments_roll_over_and_their_names_keep_the_head(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path, limit=4096, block=True)  # 16 KiB segments (the minimum)
    big = {**fields(0), "path": "/" + "x" * 2000}
    for _ in range(20):
        spool.append(big)
    spool.close()
    found = segments(tmp_path)
    assert len(found) >= 2
    records = {r["seq"]: r for r in lines(tmp_path)}
    for segment in found[1:]:
        first, prev = segment_start(segment)
        assert records[first - 1]["hash"] == prev
    # Every segment but the newest shipped and deleted, the newest emptied: the chain goes on
    # from the name alone.
    delete_acknowledged(tmp_path, 20)
    (newest,) = segments(tmp_path)
    first, prev = segment_start(newest)
    newest.write_bytes(b"")
    newest.rename(tmp_path / f"{21:020d}-{records[20]['hash']}.log")
    again = AuditSpool(tmp_path, limit=4096, block=True)
    assert (again.seq, again.head) == (20, records[20]["hash"])
    again.close()


def test_drop_policy_notes_the_gap_in_the_next_record(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path, limit=4096, block=False)
    written = dropped = 0
    for i in range(40):
        if spool.append({**fields(i), "path": "/" + "y" * 400}):
            written += 1
        else:
            dropped += 1
    assert dropped > 0 and spool.counts == {"written": written, "dropped": dropped, "refused": 0}
    spool.used = 0  # room again (the shipper deleted what was acknowledged)
    assert spool.append(fields(99))
    spool.close()
    last = lines(tmp_path)[-1]
    assert last["dropped_before"] == dropped
    assert last["seq"] == written + 1  # dropped records take no seq: the chain stays whole


def test_block_policy_refuses_new_requests_when_full_but_records_those_admitted(
    tmp_path: Path,
) -> None:
    spool = AuditSpool(tmp_path, limit=4096, block=True)
    while spool.accepting:
        assert spool.append({**fields(0), "path": "/" + "z" * 400})
    assert spool.append(fields(1))  # admitted before the spool filled: written anyway
    spool.refused()
    assert spool.counts["refused"] == 1 and spool.counts["dropped"] == 0
    spool.close()


def test_the_shipper_reads_batches_after_the_acknowledged_seq_and_resumes_at_its_cursor(
    tmp_path: Path,
) -> None:
    spool = AuditSpool(tmp_path, limit=4096, block=True)
    for i in range(30):
        spool.append({**fields(i), "path": "/" + "w" * 1000})
    spool.flush()
    batch, cursor = read_after(tmp_path, 0, None)
    assert [seq for seq, _, _ in batch] == list(range(1, 31))
    assert all(json.loads(line)["hash"] == digest for _, digest, line in batch)
    again, _ = read_after(tmp_path, 12, None)  # after a lost ack: from the acknowledged seq
    assert [seq for seq, _, _ in again] == list(range(13, 31))
    spool.append(fields(30))
    spool.flush()
    more, _ = read_after(tmp_path, 30, cursor)
    assert [seq for seq, _, _ in more] == [31]
    spool.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only): a disk that really fills."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_keeps_records_in_memory_until_shipping_frees_room(small_disk: Path) -> None:
    """The line the disk refused half-way is cut back and goes to a new segment, so the full
    one can be deleted once shipped. Before: the half line stayed, the rest had to follow in
    the same (newest, never deleted) segment, and the spool was stuck for good."""
    spool = AuditSpool(small_disk / "main", limit=1 << 30, block=True)
    for i in range(200):
        assert spool.append({**fields(i), "path": "/" + "x" * 500})
    assert not spool.accepting  # block: new audited requests are refused now
    full, _newer = segments(spool.directory)
    assert full.read_bytes().endswith(b"}\n")  # whole records only
    for _ in range(6):  # shipped and deleted, round after round, as the shipper would
        delete_acknowledged(spool.directory, spool.seq)
        spool.flush()
    assert spool.accepting  # everything held in memory is on disk now
    spool.close()
    seqs = [int(str(r["seq"])) for r in lines(spool.directory)]
    assert seqs and seqs == list(range(seqs[0], 201))  # in order, none torn, none lost


def test_the_shipper_frees_a_full_disk_before_it_notes_the_ack(small_disk: Path) -> None:
    """On a full disk the ``acked`` note cannot be written: the acknowledged segments are
    deleted first. Before: the note failed, nothing was deleted, and the spool never drained."""
    spool = AuditSpool(small_disk / "main", limit=1 << 30, block=True)
    while spool.accepting:
        spool.append({**fields(0), "path": "/" + "x" * 500})
    AuditShipper._settle(spool.directory, spool.seq)  # everything acknowledged
    spool.flush()  # closes the deleted segment: its room comes back
    spool.flush()
    assert spool.accepting
    spool.close()


_TEXT = st.text(st.characters(exclude_categories=()), max_size=10)  # surrogates included
_HEADER = st.binary(max_size=10)  # header values stay bytes
_VALUES = {  # what the sidecar puts in each member of a row (the spool's own left out)
    "audit_policies": st.lists(_TEXT, max_size=2).map(tuple), "authority": _HEADER,
    "caller": _HEADER, "decision": st.sampled_from(["allow", "deny"]),
    "duration_ms": st.integers(0, 10**13), "grpc_status": st.none() | st.integers(0, 16)
    | st.just(OMIT), "method": _HEADER, "namespace": _TEXT, "path": _HEADER, "policy": _TEXT,
    "protocol": _TEXT, "reason": _TEXT, "request_bytes": st.integers(0, 2**40),
    "request_id": _HEADER, "response_bytes": st.integers(0, 2**40), "service": _TEXT,
    "status": st.integers(0, 599), "subject": st.none() | _TEXT,
    "time": st.integers(0, 4_000_000_000 * 10**9), "trace_id": st.none() | _HEADER,
}  # fmt: skip
_SPOOLS = {"chain": st.none(), "dropped_before": st.just(OMIT), "prev": st.none(),
           "seq": st.none()}  # fmt: skip
_ROWS = st.tuples(*({**_VALUES, **_SPOOLS}[name] for name, _ in RECORD_MEMBERS))


@settings(max_examples=200, deadline=None)
@given(values=_ROWS, dropped=st.integers(0, 3))
def test_a_row_is_sealed_as_the_record_it_stands_for(
    tmp_path_factory: pytest.TempPathFactory, values: tuple[object, ...], dropped: int
) -> None:
    """The sidecar's records are rows sealed natively (no dict); the line must be the one
    the record's dict seals to (``gossamer.audit_chain``), which ``audit verify`` checks."""
    row = list(values)
    spool = AuditSpool(tmp_path_factory.mktemp("spool"), limit=1 << 20, block=False)
    spool._dropped = dropped
    assert spool.append(row)
    spool.close()
    ((line,),) = [segment.read_bytes().splitlines() for segment in segments(spool.directory)]
    assert line + b"\n" == seal(record_dict(row))
    parsed = json.loads(line)
    assert parsed["hash"] == record_hash(parsed)
    assert ("dropped_before" in parsed) == (dropped > 0)
    grpc_status = row[RECORD_MEMBERS.index(("grpc_status", "v"))]
    assert ("grpc_status" in parsed) == (grpc_status is not OMIT)


def test_without_the_native_encoder_a_row_is_sealed_through_its_dict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = [("default/audit",), b"orders", b"spiffe://a/sa/b", None, "allow", OMIT, 1_250_000,
           OMIT, b"GET", "default", b"/items", "", None, "HTTP/1.1", "", 0, b"rid-1", 10, None,
           "orders", 200, None, 1_796_000_000_123_000_000, None]  # fmt: skip
    lines_made = []
    for native in (True, False):
        if not native:
            monkeypatch.setattr(audit_spool._RECORD, "_seal", None)
        spool = AuditSpool(tmp_path / str(native), limit=1 << 20, block=True)
        spool.chain = "c0ffee"  # (each directory has its own chain id)
        assert spool.append(list(row))
        spool.close()
        (segment,) = segments(spool.directory)
        lines_made.append(segment.read_bytes())
    assert lines_made[0] == lines_made[1]
    record = json.loads(lines_made[0])
    assert (record["time"], record["duration_ms"], record["policy"]) == (
        "2026-11-30T00:53:20.123Z", 1.25, None
    )  # fmt: skip
