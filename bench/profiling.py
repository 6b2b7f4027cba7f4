"""py-spy profiles of processes under load, reduced to "top functions" tables.

Owns running ``py-spy record --format raw`` (collapsed stacks) against a PID for a bounded
time, and reading collapsed stacks into self and inclusive sample shares per function.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FunctionShare", "Profile", "py_spy_path", "read_collapsed", "start_py_spy"]


@dataclass(frozen=True)
class FunctionShare:
    function: str  # "name (file:line)" as py-spy prints it, with the path shortened
    self_pct: float
    total_pct: float


@dataclass(frozen=True)
class Profile:
    samples: int
    top_self: list[FunctionShare]
    top_total: list[FunctionShare]


def py_spy_path() -> str | None:
    """The py-spy next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def start_py_spy(
    pid: int, seconds: int, out: Path, *, native: bool = False
) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds`` into collapsed-stack file ``out``."""
    binary = py_spy_path()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    args = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--format",
        "raw",
        "--rate",
        "250",
        "--output",
        str(out),
    ]
    # --native (C frames of uvloop, OpenSSL, the kernel boundary) needs the target paused per
    # sample; without it sampling does not stop the process at all.
    args.append("--native" if native else "--nonblocking")
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _short(frame: str, by_line: bool) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    if not by_line:
        where = where.rsplit(":", 1)[0]
    return f"{name} ({where})" if where else name


def read_collapsed(path: Path, top: int = 15, *, by_line: bool = False) -> Profile:
    """Self and inclusive shares of every function (or source line) in a collapsed-stack file.

    Functions are named ``name (file)``; with ``by_line`` the line is kept (``file:line``).
    """
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            _short(f, by_line)
            for f in stack.split(";")
            if f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        samples += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            total_counts[frame] += count

    def shares(counter: Counter[str]) -> list[FunctionShare]:
        return [
            FunctionShare(
                name, 100 * self_counts[name] / samples, 100 * total_counts[name] / samples
            )
            for name, _ in counter.most_common(top)
        ]

    if samples == 0:
        return Profile(0, [], [])
    # The entry chain (runpy, main, the event loop's run) is in nearly every sample: leave it
    # out of the inclusive ranking so that the table shows where the time actually divides.
    inner = Counter({k: v for k, v in total_counts.items() if v < 0.95 * samples})
    return Profile(samples, shares(self_counts), shares(inner))
