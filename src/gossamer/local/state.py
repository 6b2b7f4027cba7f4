"""The state file of a local mesh (``<data-dir>/run/mesh.json``).

The supervisor writes it (atomically, by rename) whenever something changes; ``gossamer down``
and ``gossamer status`` read it. It records every process by PID and start time, so that a
reader can tell a live process from a reused PID.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from gossamer.local.procs import ProcessRef, is_running

__all__ = [
    "STATE_VERSION",
    "ChildRecord",
    "MeshState",
    "StateError",
    "Status",
    "read_state",
    "remove_state",
    "write_state",
]

STATE_VERSION = 1
Status = Literal["starting", "ready", "failed", "stopping"]


class StateError(ValueError):
    """The state file exists but cannot be understood."""


@dataclass(frozen=True, slots=True)
class ChildRecord:
    """One supervised process."""

    name: str
    role: str
    pid: int
    start_time: int | None
    log_path: str
    started_at: float
    service: str | None = None
    replica: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    admin_address: str | None = None
    restarts: int = 0
    last_exit: int | None = None

    @property
    def ref(self) -> ProcessRef:
        return ProcessRef(self.pid, self.start_time)

    def alive(self) -> bool:
        return is_running(self.ref)


@dataclass(frozen=True, slots=True)
class MeshState:
    """Everything a reader needs to find, inspect and stop a local mesh."""

    mesh: str
    status: Status
    supervisor_pid: int
    supervisor_start_time: int | None
    data_dir: str
    control_url: str
    stream_addr: str
    ingress_url: str | None = None
    mesh_file: str | None = None
    started_at: float = 0.0
    error: str | None = None
    children: tuple[ChildRecord, ...] = ()

    @property
    def supervisor(self) -> ProcessRef:
        return ProcessRef(self.supervisor_pid, self.supervisor_start_time)

    def all_processes(self) -> list[ProcessRef]:
        return [self.supervisor, *(child.ref for child in self.children)]

    def with_child(self, record: ChildRecord) -> MeshState:
        """This state with ``record`` added, or replacing the child of the same name."""
        if any(child.name == record.name for child in self.children):
            children = tuple(record if c.name == record.name else c for c in self.children)
        else:
            children = (*self.children, record)
        return replace(self, children=children)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = STATE_VERSION
        return data

    @classmethod
    def from_json(cls, data: Any) -> MeshState:
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise StateError("unknown state file format")
        try:
            children = tuple(ChildRecord(**child) for child in data.get("children", ()))
            fields = {k: v for k, v in data.items() if k not in ("version", "children")}
            return cls(children=children, **fields)
        except TypeError as exc:
            raise StateError(f"malformed state file: {exc}") from exc


def write_state(path: Path, state: MeshState) -> None:
    """Write ``state`` atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(state.to_json(), handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_state(path: Path) -> MeshState | None:
    """The state at ``path``, or None when there is no state file; raise ``StateError``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(f"{path}: not valid JSON: {exc}") from exc
    return MeshState.from_json(data)


def remove_state(path: Path) -> None:
    """Delete the state file if it is there."""
    path.unlink(missing_ok=True)
