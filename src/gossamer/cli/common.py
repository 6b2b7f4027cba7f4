"""What every command shares: options for finding the control plane, and error handling."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from gossamer.cli.output import error
from gossamer.local.client import ControlClient, ControlError
from gossamer.local.meshfile import MeshFileError
from gossamer.local.paths import (
    DEFAULT_CONTROL_URL,
    DEFAULT_STREAM_ADDR,
    DataDir,
    default_data_dir,
    mesh_ca_file,
    resolve_token,
)
from gossamer.local.procs import is_running
from gossamer.local.runner import StartupError
from gossamer.local.state import MeshState, StateError, read_state

__all__ = [
    "ControlUrlOption",
    "DataDirOption",
    "NamespaceOption",
    "connect",
    "data_dir_of",
    "expected_errors",
    "running_state",
    "stream_addr_of",
]

ControlUrlOption = Annotated[
    str | None,
    typer.Option(
        "--control-url",
        envvar="GOSSAMER_CONTROL_URL",
        help="Control plane API URL [default: the running local mesh's, else "
        f"{DEFAULT_CONTROL_URL}]",
        show_default=False,
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="GOSSAMER_DATA_DIR",
        help="Data directory (admin token, CA, local mesh state) [default: ~/.gossamer]",
        show_default=False,
    ),
]
NamespaceOption = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Namespace", show_default=False)
]


def data_dir_of(data_dir: Path | None) -> Path:
    return (data_dir or default_data_dir()).expanduser()


def running_state(data_dir: Path) -> MeshState | None:
    """The state of the local mesh in ``data_dir`` when its supervisor is alive."""
    try:
        state = read_state(DataDir(data_dir).state_file)
    except StateError:
        return None
    if state is None or not is_running(state.supervisor):
        return None
    return state


def _control_url(control_url: str | None, data_dir: Path) -> str:
    if control_url:
        return control_url
    state = running_state(data_dir)
    return state.control_url if state is not None else DEFAULT_CONTROL_URL


def stream_addr_of(stream_addr: str | None, data_dir: Path) -> str:
    if stream_addr:
        return stream_addr
    state = running_state(data_dir)
    return state.stream_addr if state is not None else DEFAULT_STREAM_ADDR


def connect(control_url: str | None, data_dir: Path | None) -> ControlClient:
    """A client for the control plane chosen by flags, environment and local mesh state."""
    root = data_dir_of(data_dir)
    token = os.environ.get("GOSSAMER_TOKEN") or resolve_token(root)
    return ControlClient(_control_url(control_url, root), token, ca_file=mesh_ca_file(root))


@contextmanager
def expected_errors() -> Iterator[None]:
    """Turn expected failures into ``error: ...`` on stderr and exit code 1."""
    try:
        yield
    except (ControlError, MeshFileError, StartupError, StateError) as exc:
        error(str(exc))
        raise typer.Exit(1) from None
