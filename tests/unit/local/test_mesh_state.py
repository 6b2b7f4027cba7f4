"""The state file of a local mesh: round trip, atomic replace, liveness by start time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gossamer.local.procs import proc_start_time
from gossamer.local.state import (
    ChildRecord,
    MeshState,
    StateError,
    read_state,
    remove_state,
    write_state,
)


def _state(**changes: object) -> MeshState:
    base = MeshState(
        mesh="shop", status="starting", supervisor_pid=os.getpid(),
        supervisor_start_time=proc_start_time(os.getpid()), data_dir="/tmp/x",
        control_url="http://127.0.0.1:1", stream_addr="127.0.0.1:2",
    )
    return MeshState(**{**base.__dict__, **changes}) if changes else base  # type: ignore[arg-type]


def _child(name: str, pid: int = 1, start_time: int | None = None) -> ChildRecord:
    return ChildRecord(name=name, role="app", pid=pid, start_time=start_time,
                       log_path=f"/tmp/{name}.log", started_at=1.0, ports={"app": 1234})


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    """What is written is what is read back, children included."""
    state = _state().with_child(_child("web-0")).with_child(_child("web-0-proxy"))
    path = tmp_path / "run" / "mesh.json"
    write_state(path, state)
    assert read_state(path) == state


def test_missing_file_reads_as_none(tmp_path: Path) -> None:
    """No state file means no mesh."""
    assert read_state(tmp_path / "mesh.json") is None


def test_garbage_is_a_state_error(tmp_path: Path) -> None:
    """A corrupt file is reported, not crashed on."""
    path = tmp_path / "mesh.json"
    path.write_text("{nope")
    with pytest.raises(StateError):
        read_state(path)


def test_unknown_version_is_a_state_error(tmp_path: Path) -> None:
    """A state file of another format version is refused."""
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps({"version": 99}))
    with pytest.raises(StateError, match="unknown state file format"):
        read_state(path)


def test_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    """The atomic write renames its temporary file away."""
    write_state(tmp_path / "mesh.json", _state())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh.json"]


def test_with_child_replaces_by_name_in_place() -> None:
    """Recording a restarted child replaces the old record and keeps the order."""
    state = _state().with_child(_child("a")).with_child(_child("b"))
    state = state.with_child(_child("a", pid=99))
    assert [(c.name, c.pid) for c in state.children] == [("a", 99), ("b", 1)]


def test_remove_state_is_idempotent(tmp_path: Path) -> None:
    """Removing a missing state file is not an error."""
    path = tmp_path / "mesh.json"
    write_state(path, _state())
    remove_state(path)
    remove_state(path)
    assert not path.exists()


def test_child_with_wrong_start_time_is_not_alive() -> None:
    """A live PID with another start time is a reused PID, not our process."""
    me = os.getpid()
    start = proc_start_time(me)
    assert start is not None
    assert _child("me", pid=me, start_time=start).alive()
    assert not _child("me", pid=me, start_time=start + 1).alive()


def test_all_processes_lists_supervisor_first() -> None:
    """Stopping starts from the supervisor, then the recorded children."""
    state = _state().with_child(_child("a", pid=7))
    assert [ref.pid for ref in state.all_processes()] == [os.getpid(), 7]
