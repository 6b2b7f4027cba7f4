"""Processes by PID: spawning with a log, start-time identity, polite stop, ports."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from gossamer.local.ports import PortAllocator, port_is_free
from gossamer.local.procs import ProcessRef, is_running, proc_start_time, spawn, stop_all, tail


def test_spawn_writes_output_to_the_log(tmp_path: Path) -> None:
    """stdout and stderr of a child end up in its log file."""
    log = tmp_path / "logs" / "child.log"
    proc = spawn([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"],
                 env={"PATH": "/usr/bin:/bin"}, log_path=log)
    assert proc.wait(timeout=10) == 0
    text = log.read_text()
    assert "out" in text and "err" in text and "starting:" in text


def test_stop_all_terminates_then_kills(tmp_path: Path) -> None:
    """A child that ignores SIGTERM is killed after the grace period."""
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(60)")
    log = tmp_path / "stubborn.log"
    proc = spawn([sys.executable, "-c", code], env={}, log_path=log)
    try:
        deadline = time.monotonic() + 10
        while "up" not in log.read_text().split("starting:")[-1].split("\n", 1)[-1]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ref = ProcessRef(proc.pid, proc_start_time(proc.pid))
        killed = stop_all([ref], grace=0.5, children={proc.pid: proc})
        assert killed == [ref]
        assert not is_running(ref)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stop_all_is_quick_for_polite_children(tmp_path: Path) -> None:
    """A child that exits on SIGTERM is not killed and the stop takes well under the grace."""
    proc = spawn([sys.executable, "-c", "import time; time.sleep(60)"], env={},
                 log_path=tmp_path / "polite.log")
    try:
        ref = ProcessRef(proc.pid, proc_start_time(proc.pid))
        started = time.monotonic()
        assert stop_all([ref], grace=5.0, children={proc.pid: proc}) == []
        assert time.monotonic() - started < 4.0
        assert proc.poll() is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_zombie_counts_as_gone(tmp_path: Path) -> None:
    """An exited but unreaped child is not running."""
    proc = spawn([sys.executable, "-c", "pass"], env={}, log_path=tmp_path / "z.log")
    ref = ProcessRef(proc.pid, proc_start_time(proc.pid))
    deadline = time.monotonic() + 10
    while is_running(ref):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.wait()
    assert not is_running(ref)


def test_unknown_pid_has_no_start_time() -> None:
    """A PID that does not exist has no start time and is not running."""
    assert proc_start_time(2**22 + 12345) is None
    assert not is_running(ProcessRef(2**22 + 12345, None))


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    """tail() gives the end of a log, and '' for a missing one."""
    path = tmp_path / "x.log"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(path, 3) == "line 97\nline 98\nline 99"
    assert tail(tmp_path / "missing.log") == ""


def test_allocator_never_repeats_and_skips_reserved() -> None:
    """Allocated ports are distinct and never a reserved one."""
    allocator = PortAllocator({1})
    ports = [allocator.allocate() for _ in range(20)]
    assert len(set(ports)) == 20 and 1 not in ports


def test_port_is_free_sees_a_listener() -> None:
    """A port with a listener is not free."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not port_is_free(sock.getsockname()[1])


def test_allocated_ports_are_outside_the_ephemeral_range() -> None:
    """No allocated port can be the local end the kernel picks for an outgoing connection."""
    text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
    low, high = (int(v) for v in text.split())
    ports = [PortAllocator().allocate() for _ in range(50)]
    assert all(not low <= port <= high for port in ports)
    assert all(port >= 1024 for port in ports)


def test_a_pid_without_a_recorded_start_time_is_never_signalled() -> None:
    """Without its start time a PID could be anybody's by now (reuse): it is not ours to
    signal, and not reported running (issue 11, lows)."""
    import signal
    import subprocess

    from gossamer.local.procs import send_signal

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ref = ProcessRef(child.pid, None)
        assert not is_running(ref)
        send_signal([ref], signal.SIGTERM)
        time.sleep(0.2)
        assert child.poll() is None  # untouched
    finally:
        child.kill()
        child.wait(5)
