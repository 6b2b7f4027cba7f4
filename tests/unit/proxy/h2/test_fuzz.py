"""Fuzzing the C codec through the session wrapper: garbage, truncated and malformed frames
must end in events or ``H2Error``, never a crash, a stray exception, or a leak."""

from __future__ import annotations

import gc
import itertools
import random
import struct
import weakref

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossamer.protocol.h2.session import H2Error, H2Session
from gossamer.proxy.h2 import H2_PREFACE
from tests.unit.proxy.h2.pairs import GET

FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def frame(
    kind: int, flags: int, stream_id: int, payload: bytes, length: int | None = None
) -> bytes:
    """One frame; ``length`` may lie about the payload's size."""
    size = len(payload) if length is None else length
    head = struct.pack(">I", size)[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id)
    return head + payload


frames = st.builds(
    frame,
    kind=st.integers(0, 12),
    flags=st.integers(0, 255),
    stream_id=st.sampled_from([0, 1, 2, 3, 5, 0x7FFFFFFF, 0x80000001]),
    payload=st.binary(max_size=64),
    length=st.one_of(st.none(), st.integers(0, 80)),
)


def feed(session: H2Session, data: bytes, cuts: list[int]) -> None:
    """Feed ``data`` in pieces split at ``cuts``, sending what the session answers."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for start, end in itertools.pairwise(points):
            events = session.receive(data[start:end])
            assert isinstance(events, list)
            session.data_to_send()
            session.take_events()
    except H2Error:
        pass


@FUZZ
@given(garbage=st.binary(max_size=512), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_random_bytes_after_the_preface_never_crash(garbage: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes after a valid preface end in events or H2Error."""
    server = H2Session(client=False)
    try:
        feed(server, H2_PREFACE + EMPTY_SETTINGS + garbage, cuts)
    finally:
        server.close()


@FUZZ
@given(
    sequence=st.lists(frames, min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 1000), max_size=6),
)
def test_malformed_frames_never_crash_a_server(sequence: list[bytes], cuts: list[int]) -> None:
    """Frames with random types, flags, ids, lengths and payloads are refused cleanly."""
    server = H2Session(client=False)
    try:
        feed(server, H2_PREFACE + EMPTY_SETTINGS + b"".join(sequence), cuts)
    finally:
        server.close()


@FUZZ
@given(sequence=st.lists(frames, min_size=1, max_size=8))
def test_malformed_frames_never_crash_a_client(sequence: list[bytes]) -> None:
    """A client with a request in flight survives any answer."""
    client = H2Session(client=True)
    try:
        client.submit_request(GET, end_stream=True)
        client.data_to_send()
        feed(client, EMPTY_SETTINGS + b"".join(sequence), [])
    finally:
        client.close()


@FUZZ
@given(data=st.binary(max_size=200), cut=st.integers(0, 200))
def test_truncated_valid_traffic_never_crashes(data: bytes, cut: int) -> None:
    """A real request cut short anywhere, followed by junk, is handled."""
    client = H2Session(client=True)
    server = H2Session(client=False)
    try:
        sid, _ = client.submit_request(GET, end_stream=False)
        client.send_data(sid, b"body" * 50)
        wire = client.data_to_send()
        feed(server, wire[: cut % (len(wire) + 1)] + data, [cut])
    finally:
        client.close()
        server.close()


def _rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4


def test_bounded_random_loop_does_not_leak() -> None:
    """Thousands of sessions fed random frames and closed leave no sessions and little memory."""
    rng = random.Random(4)

    def one_round() -> weakref.ref[H2Session]:
        server = H2Session(client=False)
        wire = H2_PREFACE + EMPTY_SETTINGS
        for _ in range(rng.randint(1, 6)):
            payload = rng.randbytes(rng.randint(0, 48))
            wire += frame(rng.randint(0, 10), rng.randint(0, 255), rng.choice([0, 1, 3]), payload)
        feed(server, wire, [rng.randint(0, len(wire))])
        server.close()
        return weakref.ref(server)

    for _ in range(300):  # warm-up: allocator pools, caches
        one_round()
    gc.collect()
    before = _rss_kib()
    refs = [one_round() for _ in range(3000)]
    gc.collect()
    grown = _rss_kib() - before
    assert all(ref() is None for ref in refs)
    assert grown < 4096, f"RSS grew by {grown} KiB over 3000 sessions"
