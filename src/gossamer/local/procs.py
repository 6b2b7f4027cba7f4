"""Process management by PID: start with a log file, identify by start time, stop politely.

A PID alone can be reused by the kernel after the process is gone, so every recorded process
carries its start time (field 22 of ``/proc/<pid>/stat``); ``is_running`` and the stop
functions only signal a PID whose start time still matches.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProcessRef",
    "is_running",
    "proc_start_time",
    "send_signal",
    "spawn",
    "stop_all",
    "tail",
    "wait_gone",
]

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class ProcessRef:
    """A process we started: its PID and the start time that guards against PID reuse."""

    pid: int
    start_time: int | None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces
    _, _, rest = text.rpartition(")")
    return rest.split()


def proc_start_time(pid: int) -> int | None:
    """The process start time in clock ticks since boot, or None when there is no such PID."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])  # field 22 overall; fields[0] is field 3 (state)


def is_running(ref: ProcessRef) -> bool:
    """True when the PID exists, is not a zombie and has the recorded start time (a PID
    without one could be anybody's by now: it is never ours)."""
    fields = _stat_fields(ref.pid)
    if fields is None or len(fields) < 20:
        return False
    if fields[0] in ("Z", "X", "x"):
        return False
    return ref.start_time is not None and int(fields[19]) == ref.start_time


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "prctl") else None


_LIBC = _load_libc()  # loaded in the parent: dlopen is not safe between fork and exec


def _parent_death_signal() -> None:  # runs in the child between fork and exec
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    new_session: bool = True,
    die_with_parent: bool = True,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr appended to ``log_path`` and stdin closed.

    ``new_session`` keeps a terminal's Ctrl-C away from the child so that its parent stops it
    in order; ``die_with_parent`` asks Linux to SIGTERM the child if its parent dies.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
            preexec_fn=_parent_death_signal if die_with_parent else None,
            close_fds=True,
        )


def send_signal(refs: Sequence[ProcessRef], sig: signal.Signals) -> None:
    """Send ``sig`` to every process that is still the one recorded."""
    for ref in refs:
        if not is_running(ref):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(ref.pid, sig)


def wait_gone(
    refs: Sequence[ProcessRef],
    timeout: float,
    children: Mapping[int, subprocess.Popen[bytes]] | None = None,
) -> list[ProcessRef]:
    """Wait up to ``timeout`` seconds for the processes to end; return those still running.

    ``children`` are our own ``Popen`` objects by PID; they are reaped while waiting so that
    they do not linger as zombies.
    """
    own = list((children or {}).values())
    deadline = time.monotonic() + timeout
    while True:
        for proc in own:
            proc.poll()
        left = [ref for ref in refs if is_running(ref)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def stop_all(
    refs: Sequence[ProcessRef],
    *,
    grace: float = 5.0,
    children: Mapping[int, subprocess.Popen[bytes]] | None = None,
) -> list[ProcessRef]:
    """SIGTERM every process, wait up to ``grace`` seconds, SIGKILL the rest.

    Returns the processes that had to be killed.
    """
    send_signal(refs, signal.SIGTERM)
    killed = wait_gone(refs, grace, children)
    if killed:
        send_signal(killed, signal.SIGKILL)
        wait_gone(killed, 2.0, children)
    return killed


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' when it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
