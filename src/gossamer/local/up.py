"""Entry points of the local runner: run a mesh in the foreground, start it detached, stop it.

``serve`` is the supervisor's life (start, watch, stop on SIGINT/SIGTERM/SIGHUP).
``start_detached`` starts ``serve`` in a new session and waits for the state file to say ready.
``stop_mesh`` is ``gossamer down``: SIGTERM the supervisor, wait for every recorded PID, SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from gossamer.local.meshfile import MeshFile
from gossamer.local.paths import DataDir
from gossamer.local.procs import is_running, send_signal, tail, wait_gone
from gossamer.local.runner import Log, StartupError, Supervisor, check_not_running
from gossamer.local.state import MeshState, StateError, read_state, remove_state

__all__ = ["StopResult", "serve", "start_detached", "stop_mesh"]

DETACH_TIMEOUT = 150.0


def serve(
    mesh: MeshFile,
    data_dir: Path,
    *,
    on_ready: Callable[[MeshState], None],
    log: Log,
) -> int:
    """Run the mesh until SIGINT/SIGTERM/SIGHUP; return the exit code (1: failed to start)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    supervisor = Supervisor(mesh, data_dir, stop=stop, log=log)
    try:
        try:
            state = supervisor.start()
        except StartupError as exc:
            log(f"error: {exc}")
            supervisor.fail(str(exc))
            return 1
        on_ready(state)
        supervisor.watch()
        log("stopping mesh")
        supervisor.shutdown()
        remove_state(supervisor.data.state_file)
        log("mesh stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def start_detached(mesh_path: Path, data_dir: Path, *, timeout: float = DETACH_TIMEOUT,
                   log: Log | None = None,
                   ports: Mapping[str, int | None] | None = None) -> MeshState:
    """Start the supervisor in its own session and wait until it reports ready.

    ``ports`` are the port overrides of ``gossamer up`` (``api_port``, ``stream_port``,
    ``ingress_port``), passed on to the supervisor. Raises ``StartupError`` with the
    supervisor's reason when it fails or takes too long.
    """
    data = DataDir(data_dir.resolve())
    data.create()
    check_not_running(data, log or (lambda message: None))
    log_path = data.log_path("supervisor")
    argv = [sys.executable, "-m", "gossamer.cli", "up", "-f", str(mesh_path.resolve()),
            "--data-dir", str(data.root), "--foreground-supervisor"]
    for name, port in (ports or {}).items():
        if port is not None:
            argv += ["--" + name.replace("_", "-"), str(port)]
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return _wait_ready(proc, data, log_path, timeout)
    except KeyboardInterrupt:
        _stop_supervisor(proc)
        raise StartupError("interrupted; the mesh was stopped") from None


def _wait_ready(proc: subprocess.Popen[bytes], data: DataDir, log_path: Path,
                timeout: float) -> MeshState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _read_quietly(data)
        if state is not None and state.supervisor_pid == proc.pid:
            if state.status == "ready":
                return state
            if state.status == "failed":
                proc.wait(timeout=30)
                remove_state(data.state_file)
                raise StartupError(state.error or "the mesh failed to start")
        code = proc.poll()
        if code is not None:
            remove_state(data.state_file)
            raise StartupError(f"the supervisor exited with code {code}; last lines of "
                               f"{log_path}:\n{tail(log_path)}")
        time.sleep(0.2)
    _stop_supervisor(proc)
    raise StartupError(f"the mesh was not ready within {timeout:.0f} s; see {log_path}")


def _stop_supervisor(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the supervisor (it stops its children) and wait for it; SIGKILL after 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _read_quietly(data: DataDir) -> MeshState | None:
    try:
        return read_state(data.state_file)
    except StateError:
        return None  # being written or from another version; the caller polls again


@dataclass(frozen=True, slots=True)
class StopResult:
    """What ``stop_mesh`` did."""

    was_running: bool
    stopped: int
    killed: int


def stop_mesh(data_dir: Path, *, timeout: float = 10.0) -> StopResult:
    """Stop the mesh recorded in ``data_dir`` and remove its state; raise ``StateError``."""
    data = DataDir(data_dir.resolve())
    state = read_state(data.state_file)
    if state is None:
        return StopResult(False, 0, 0)
    refs = [ref for ref in state.all_processes() if ref.pid != os.getpid() and is_running(ref)]
    if not refs:
        remove_state(data.state_file)
        return StopResult(False, 0, 0)
    if is_running(state.supervisor):
        # the supervisor stops its children in order; we wait for all and clean up after it
        send_signal([state.supervisor], signal.SIGTERM)
    else:
        send_signal(refs, signal.SIGTERM)
    killed = wait_gone(refs, timeout)
    if killed:
        send_signal(killed, signal.SIGKILL)
        wait_gone(killed, 3.0)
    remove_state(data.state_file)
    return StopResult(True, len(refs), len(killed))
