"""Load generators: wrk for HTTP/1.1 and bulk transfers, h2load for HTTP/2 (h2c).

Owns the command lines and the parsing of their output into :class:`LoadResult`. wrk reports
through ``templates/wrk-report.lua`` (one JSON line, latencies in microseconds); h2load through
its per-request log file (percentiles are computed here from every request's time).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LoadError", "LoadResult", "run_h2load", "run_wrk"]

WRK_SCRIPT = Path(__file__).resolve().parent / "templates" / "wrk-report.lua"
_H2_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_H2_FINISHED = re.compile(r"finished in ([\d.]+)(m?s)")
_H2_TRAFFIC = re.compile(r"traffic: .*?\((\d+)\) total")
_H2_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


class LoadError(RuntimeError):
    """The load tool failed or the path answered with errors."""


@dataclass(frozen=True)
class LoadResult:
    """One load run: counts, duration, latency percentiles (microseconds), errors."""

    requests: int
    duration_s: float
    p50_us: float
    p99_us: float
    mean_us: float
    bytes: int
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.duration_s / 1e6 if self.duration_s > 0 else 0.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LoadError(f"{name} is not installed")
    return path


def run_wrk(
    url: str,
    *,
    connections: int,
    duration: int,
    host: str | None = None,
    threads: int = 1,
) -> LoadResult:
    """Run wrk for ``duration`` seconds; raise ``LoadError`` if it fails or saw errors."""
    args = [
        _tool("wrk"),
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
    ]
    if host is not None:
        args += ["-H", f"Host: {host}"]
    args.append(url)
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=duration + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"wrk did not finish: {' '.join(args)}") from exc
    report = None
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            report = json.loads(line)
    if done.returncode != 0 or report is None:
        raise LoadError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    errors = sum(
        int(report[k])
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    result = LoadResult(
        requests=int(report["requests"]),
        duration_s=int(report["duration_us"]) / 1e6,
        p50_us=float(report["p50_us"]),
        p99_us=float(report["p99_us"]),
        mean_us=float(report["mean_us"]),
        bytes=int(report["bytes"]),
        errors=errors,
    )
    if result.requests == 0 or errors > max(2, result.requests // 1000):
        raise LoadError(f"{url}: {errors} errors in {result.requests} requests: {report}")
    return result


def _percentile(sorted_values: list[int], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return float(sorted_values[index])


def run_h2load(
    url: str,
    *,
    clients: int,
    streams: int,
    duration: int = 0,
    requests: int = 0,
    authority: str | None = None,
) -> LoadResult:
    """Run h2load (h2c prior knowledge) with one thread, for ``duration`` seconds or, when
    ``requests`` is given, for that many requests."""
    with tempfile.TemporaryDirectory(prefix="gossamer-h2load-") as tmp:
        log_path = Path(tmp) / "requests.log"
        args = [
            _tool("h2load"),
            "-t1",
            f"-c{clients}",
            f"-m{streams}",
            f"-D{duration}",
            "--log-file",
            str(log_path),
        ]
        if authority is not None:
            args += ["-H", f":authority: {authority}"]
        args.append(url)
        try:
            done = subprocess.run(
                args, capture_output=True, text=True, timeout=duration + 60, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LoadError(f"h2load did not finish: {' '.join(args)}") from exc
        counts = _H2_REQUESTS.search(done.stdout)
        finished = _H2_FINISHED.search(done.stdout)
        if done.returncode != 0 or counts is None or finished is None:
            raise LoadError(f"h2load failed ({done.returncode}): {done.stdout}\n{done.stderr}")
        times: list[int] = []
        if log_path.exists():
            for line in log_path.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) >= 3 and parts[1].startswith("2"):
                    times.append(int(parts[2]))
    times.sort()
    elapsed = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    succeeded = int(counts.group(4))
    errors = int(counts.group(5)) + int(counts.group(6)) + int(counts.group(7))
    status = _H2_STATUS.search(done.stdout)
    if status is not None:
        errors += sum(int(status.group(i)) for i in (2, 3, 4))  # only 2xx counts as served
    traffic = _H2_TRAFFIC.search(done.stdout)
    if succeeded == 0 or errors > max(2, succeeded // 1000):
        raise LoadError(f"{url}: {errors} failed of {counts.group(1)}: {done.stdout}")
    return LoadResult(
        requests=succeeded,
        duration_s=elapsed,
        p50_us=_percentile(times, 50),
        p99_us=_percentile(times, 99),
        mean_us=sum(times) / len(times) if times else 0.0,
        bytes=int(traffic.group(1)) if traffic else 0,
        errors=errors,
    )
