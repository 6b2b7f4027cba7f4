"""Processes the suite starts, and what it reads about them from /proc.

Owns: free ports, spawning a child with its output in a log file, stopping every child by PID
(SIGTERM, then SIGKILL after a bound), waiting for a port, and the /proc readers the figures
come from: CPU time (``utime + stime`` of ``/proc/<pid>/stat``) and resident memory (``VmRSS``
of ``/proc/<pid>/status``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gossamer.local.ports import PortAllocator

__all__ = [
    "CLOCK_TICKS",
    "Proc",
    "ProcessGroup",
    "cpu_seconds",
    "cpu_times",
    "free_port",
    "rss_kib",
    "wait_port",
]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


_PORTS = PortAllocator()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a process started next
    (outside the kernel's ephemeral range, never the same twice: see ``PortAllocator``)."""
    return _PORTS.allocate()


def wait_port(port: int, timeout: float = 10.0, proc: Proc | None = None) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; raise ``RuntimeError`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    detail = f"\n{proc.log()}" if proc is not None else ""
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s{detail}")


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process (all its threads) so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15.
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads) so far, in seconds."""
    user, system = cpu_times(pid)
    return user + system


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (``VmRSS``)."""
    return _status_kib(pid, "VmRSS:")


def peak_rss_kib(pid: int) -> int:
    """The most a process has held resident so far, in KiB (``VmHWM``): catches peaks in the
    middle of a load that a reading after it would miss."""
    return _status_kib(pid, "VmHWM:")


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


@dataclass
class Proc:
    """One child process, its log file and the ports it was given."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self, tail: int = 4000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


class ProcessGroup:
    """Everything one experiment started; :meth:`stop_all` stops each by PID, newest first."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def spawn(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = None,
    ) -> Proc:
        """Start ``args`` with stdout/stderr in ``<workdir>/<name>.log`` (unless ``stdout``)."""
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                list(args),
                stdin=stdin,
                stdout=log if stdout is None else stdout,
                stderr=log,
                env={**os.environ, **(env or {})},
                cwd=ROOT,
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, procs: Iterable[Proc]) -> None:
        for proc in procs:
            proc.stop()
            if proc in self.procs:
                self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
