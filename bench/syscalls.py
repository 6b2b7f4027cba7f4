"""System calls per request of a path's proxy processes (``strace -c``), when strace exists.

A diagnostic, not a figure of record: strace slows the traced process a lot, but the number of
``read``/``write``/``sendto``/``recvfrom``/``epoll`` calls per request does not depend on speed,
and it is what batching work changes (for example one ``write`` per response instead of two).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.load import run_wrk
from bench.topology import PathSpec

__all__ = ["strace_available", "syscall_census"]

TOP = 6


def strace_available() -> bool:
    return shutil.which("strace") is not None


def _parse(path: Path, requests: int) -> dict[str, float]:
    calls: dict[str, float] = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) < 5 or not parts[0][0].isdigit() or parts[-1] == "total":
            continue
        if parts[3].isdigit():
            calls[parts[-1]] = int(parts[3]) / requests
    ranked = sorted(calls.items(), key=lambda item: -item[1])[:TOP]
    return {name: round(value, 2) for name, value in ranked}


def syscall_census(
    spec: PathSpec, seconds: int, workdir: Path, connections: int = 50
) -> dict[str, Any]:
    """Trace every proxy process of ``spec`` during a load at ``connections``."""
    binary = shutil.which("strace")
    if binary is None:
        return {"error": "strace is not installed"}
    tracers: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        for proc in spec.procs:
            out = workdir / f"strace-{spec.key}-{proc.name}.txt"
            tracer = subprocess.Popen(
                [binary, "-c", "-f", "-p", str(proc.pid), "-o", str(out)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            tracers.append((proc.name, tracer, out))
        time.sleep(0.5)  # attach
        result = run_wrk(spec.url, connections=connections, duration=seconds, host=spec.host)
    finally:
        for _, tracer, _ in tracers:
            if tracer.poll() is None:
                tracer.send_signal(signal.SIGINT)
        for _, tracer, _ in tracers:
            try:
                tracer.wait(10)
            except subprocess.TimeoutExpired:
                tracer.kill()
                tracer.wait(5)
    return {
        "requests": result.requests,
        "per_request": {name: _parse(out, result.requests) for name, _, out in tracers},
    }
