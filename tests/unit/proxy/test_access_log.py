"""Access logs: the line formats, the writer on a real file and a real pipe (bounded queue,
whole lines), the MeshConfig's validation with field paths, and which workloads log
(the MeshConfig's ``accessLog`` and each Service's ``accessLog``)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer.config import ValidationFailed, validate_documents
from gossamer.config.meshconfig import DEFAULT_ACCESS_LOG_TEMPLATE
from gossamer.control.snapshots import DEFAULT_ACCESS_LOG, MeshView, ServiceInfo, build_snapshot
from gossamer.json_lines import NATIVE
from gossamer.proxy.observe import access_log
from gossamer.proxy.observe.access_log import AccessLog, Entry, format_line, format_lines
from gossamer.proxy.snapshot.access_log import compile_access_log
from gossamer.proxy.snapshot.errors import SnapshotError
from tests.tools import require

ENTRY: Entry = (
    1_796_000_000_123_000_000, "outbound", "HTTP/1.1", b"GET", b"catalog", b"/items?x=1", 503,
    "no-healthy-endpoints", 0, 57, 1_250_000, "catalog", "", "spiffe://gossamer.local/ns/default/sa/catalog",
    b"ab-1", None, b"curl/8.0",
)  # fmt: skip


def test_a_json_line_has_every_field() -> None:
    line = format_line(ENTRY, "json", "")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    fields = json.loads(line)
    assert fields == {
        "time": "2026-11-30T00:53:20.123Z", "direction": "outbound", "protocol": "HTTP/1.1",
        "method": "GET", "authority": "catalog", "path": "/items?x=1", "status": 503,
        "error": "no-healthy-endpoints", "request_bytes": 0, "response_bytes": 57,
        "duration_ms": 1.25, "service": "catalog", "upstream": None,
        "peer": "spiffe://gossamer.local/ns/default/sa/catalog", "request_id": "ab-1",
        "trace_id": None, "user_agent": "curl/8.0",
    }  # fmt: skip


def test_a_text_line_follows_the_template_with_dashes_for_empty_values() -> None:
    line = format_line(ENTRY, "text", DEFAULT_ACCESS_LOG_TEMPLATE).decode()
    assert line == (
        '[2026-11-30T00:53:20.123Z] outbound "GET /items?x=1 HTTP/1.1" 503 no-healthy-endpoints '
        '0 57 1.25 "curl/8.0" "ab-1" "catalog" "-" catalog '
        "spiffe://gossamer.local/ns/default/sa/catalog -\n"
    )
    forged = (*ENTRY[:5], b"/a\nHTTP/1.1 200 OK", *ENTRY[6:])
    assert format_line(forged, "text", "{path}").count(b"\n") == 1  # one request, one line


_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)  # surrogates included
_BYTES = st.binary(max_size=12)
_ENTRIES = st.tuples(
    st.integers(0, 8_000_000_000 * 10**9)
    | st.sampled_from([0, 999_999, 1_796_000_000_999_999_999]),
    _TEXT, _TEXT, _BYTES, _BYTES, _BYTES, st.integers(-1, 999), _TEXT, st.integers(0, 2**70),
    st.integers(0, 2**63), st.integers(0, 2**62) | st.integers(0, 10**7), _TEXT, _TEXT, _TEXT,
    _BYTES, st.none() | _BYTES, st.none() | _BYTES,
)


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(_ENTRIES, max_size=4))
def test_the_native_lines_are_the_bytes_format_line_writes(entries: list[Entry]) -> None:
    """JSON lines are made by the native encoder in one call for many entries (the writer's
    CPU per line: bench.observe); they must be what ``format_line`` writes, byte for byte,
    whatever the values (empty ones, non-ASCII text and bytes, far times, long durations)."""
    require(NATIVE, "the native JSON line encoder (make builds it)")
    expected = b"".join(format_line(entry, "json", "") for entry in entries)
    assert access_log._ROWS.encode(entries) == expected
    assert format_lines(entries, "json", "") == expected


def test_a_row_the_native_encoder_refuses_is_formatted_in_python() -> None:
    require(NATIVE, "the native JSON line encoder (make builds it)")
    odd = (*ENTRY[:6], HTTPStatus(503), *ENTRY[7:])  # an int subclass: json's to write
    assert access_log._ROWS.encode([ENTRY, odd]) is None
    assert format_lines([ENTRY, odd], "json", "") == format_line(ENTRY, "json", "") * 2


def test_the_writer_writes_whole_lines_at_most_a_pipe_buffer_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = AccessLog("json", "", str(tmp_path / "access.log"))
    writer._stop.set()
    writer._writer.join()
    writes: list[tuple[bytes, int]] = []
    monkeypatch.setattr(writer, "_write", lambda data, lines: writes.append((data, lines)))
    long = (*ENTRY[:5], b"/" + b"x" * 5000, *ENTRY[6:])
    for entry in [ENTRY] * 30 + [long] + [ENTRY] * 30:
        writer.add(entry)
    writer._drain()
    assert sum(lines for _, lines in writes) == 61
    for data, lines in writes:
        assert data.endswith(b"\n") and data.count(b"\n") == lines
        assert len(data) <= access_log.PIPE_ATOMIC or lines == 1
    assert b"".join(data for data, _ in writes) == format_lines(
        [ENTRY] * 30 + [long] + [ENTRY] * 30, "json", ""
    )
    os.close(writer.fd)


def test_the_writer_appends_whole_lines_and_bounds_its_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "access.log"
    writer = AccessLog("json", "", str(path))
    for _ in range(5):
        writer.add(ENTRY)
    writer.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["status"] == 503 for line in lines)
    assert (writer.written, writer.dropped_full) == (5, 0)
    monkeypatch.setattr(access_log, "MAX_QUEUE", 3)
    full = AccessLog("json", "", str(path))
    full._stop.set()  # the writer thread sleeps: the queue fills
    full._writer.join()
    for _ in range(5):
        full.add(ENTRY)
    full.close()
    assert (full.written, full.dropped_full) == (3, 2)


def test_lines_to_a_pipe_arrive_whole() -> None:
    read_end, write_end = os.pipe()  # 64 KiB of room: the 100 lines fit
    writer = AccessLog("json", "", f"/proc/self/fd/{write_end}")
    for _ in range(100):
        writer.add(ENTRY)
    writer.close()
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 1 << 20):
        data += chunk
    os.close(read_end)
    assert data.count(b"\n") == 100
    assert all(json.loads(line)["request_id"] == "ab-1" for line in data.splitlines())


def mesh(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "gossamer.dev/v1alpha1", "kind": "MeshConfig",
            "metadata": {"name": "default"}, "spec": spec}  # fmt: skip


@pytest.mark.parametrize(("access", "path"), [
    ({"template": "{status} {nope}"}, "spec.accessLog.template"),
    ({"template": "{status:>5}"}, "spec.accessLog.template"),
    ({"template": "{status"}, "spec.accessLog.template"),
    ({"format": "xml"}, "spec.accessLog.format"),
    ({"path": "relative.log"}, "spec.accessLog.path"),
])  # fmt: skip
def test_bad_access_log_settings_are_refused_with_their_path(
    access: dict[str, Any], path: str
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_documents([mesh(accessLog=access)])
    assert [p.path for p in caught.value.problems] == [path]


def view(access: Any, services: list[ServiceInfo]) -> MeshView:
    return MeshView(trust_domain="gossamer.local", mtls_mode="STRICT",
                    services={(s.namespace, s.name): s for s in services}, endpoints={},
                    workload_services=frozenset(), access_log=access)  # fmt: skip


def test_which_workloads_log_the_mesh_default_and_each_service() -> None:
    on = {"format": "text", "template": "{status}", "path": "/var/log/gossamer.log"}
    quiet = ServiceInfo("quiet", "shop", "quiet", access_log=False)
    loud = ServiceInfo("loud", "shop", "loud", access_log=True)
    plain = ServiceInfo("plain", "shop", "plain")
    for services_on, mesh_setting in ((on, on), (None, None)):
        v = view(mesh_setting, [quiet, loud, plain])
        assert build_snapshot("shop", "quiet", [], v)["access_log"] is None
        assert build_snapshot("shop", "plain", [], v)["access_log"] == services_on
        assert build_snapshot("shop", "loud", [], v)["access_log"] == (on if mesh_setting
                                                                       else DEFAULT_ACCESS_LOG)
    assert replace(plain, access_log=None) == plain


def test_the_sidecar_refuses_a_bad_access_log_with_its_field() -> None:
    good = {"format": "json", "template": "{status}", "path": "/dev/stdout"}
    assert compile_access_log(good) is not None and compile_access_log(None) is None
    for field, value in (("format", "xml"), ("path", "x.log"), ("template", "{nope}")):
        with pytest.raises(SnapshotError, match=f"snapshot.access_log.{field}"):
            compile_access_log({**good, field: value})


def test_the_observe_bench_runs_every_case() -> None:
    """``python -m bench.observe`` (a few requests: it runs, and every case is there)."""
    from bench.observe import measure

    rows = measure(rounds=1, requests=200)["rows"]
    assert [row["case"] for row in rows] == [
        "none of them", "access log", "audit", "tap, a request it emits",
        "tap, at its cap (100 events/s)",
        "access log, writer per line (off the request path)",
        "everything on (tracing 1%, access log, audit, a tap at its cap), request path",
        "everything on, with the writer's CPU per line (target: <= 10 us)",
        "(the loop's resets, taken off the rows above)",
    ]  # fmt: skip
    assert all(row["us_per_request"] > 0 for row in rows[1:])
