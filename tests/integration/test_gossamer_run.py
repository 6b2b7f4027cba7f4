"""`gossamer run` with real processes: a control plane, a catalog service (app and sidecar),
and `python -m gossamer.cli run` joining a command to them (issue 12, items 4 and 5).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gossamer.local.procs import ProcessRef, is_running, proc_start_time
from tests.integration.control_helpers import ControlPlaneProcess, running_control_plane
from tests.process_harness import ROOT, Processes, wait_port, wait_ready
from tests.sidecar_harness import free_port

STARTED = re.compile(r"sidecar for batch started \(pid (\d+), admin (\S+),")
RESTARTED = re.compile(r"sidecar for batch restarted \(pid (\d+)")

# A client-only job: calls catalog through HTTP_PROXY, then waits (bounded) for the test.
CLIENT_JOB = """
import json, os, sys, time, urllib.request
print("PORT" in os.environ and "port " + os.environ["PORT"] or "no port", flush=True)
data = json.load(urllib.request.urlopen("http://catalog/items", timeout=10))
print("peer", data["peer"], flush=True)
deadline = time.monotonic() + 30
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.05)
"""

# A job that calls catalog every 0.1 s until told to stop (bounded), one line per call.
LOOP_JOB = """
import os, sys, time, urllib.request
out, stop = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 90
with open(out, "a", buffering=1) as f:
    while time.monotonic() < deadline and not os.path.exists(stop):
        try:
            with urllib.request.urlopen("http://catalog/", timeout=2) as r:
                f.write(f"{time.time()} {r.status}\\n")
        except Exception as exc:
            f.write(f"{time.time()} error {type(exc).__name__}\\n")
        time.sleep(0.1)
print("job done", flush=True)
"""


@dataclass
class Mesh:
    cp: ControlPlaneProcess
    tmp: Path

    def start_run(self, name: str, job: str, *args: str, port: int | None = None
                  ) -> tuple[subprocess.Popen[bytes], Path, Path]:
        """`gossamer run --service batch [--port P] -- python JOB ARGS`; (proc, stdout, stderr)."""
        script = self.tmp / f"{name}.py"
        script.write_text(job)
        out, err = self.tmp / f"{name}.out", self.tmp / f"{name}.err"
        env = {k: v for k, v in os.environ.items()
               if k not in ("GOSSAMER_CA_FILE", "GOSSAMER_TOKEN", "GOSSAMER_DATA_DIR",
                            "GOSSAMER_CONTROL_URL")}
        argv = [sys.executable, "-m", "gossamer.cli", "run", "--service", "batch",
                "--data-dir", str(self.cp.data_dir), "--control-url", self.cp.api_url,
                "--stream-addr", f"{self.cp.stream_host}:{self.cp.stream_port}",
                *(["--port", str(port)] if port is not None else []),
                "--", sys.executable, str(script), *args]
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env, cwd=ROOT)
        return proc, out, err


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    with running_control_plane(tmp_path / "cp", "--endpoint-grace", "1") as cp:
        procs = Processes(tmp_path)
        try:
            app = procs.app("catalog-1")
            wait_port(app.ports["app"])
            sidecar = procs.sidecar(cp, "catalog-sidecar-1", "catalog", app.ports["app"])
            wait_ready(sidecar)
            yield Mesh(cp, tmp_path)
        finally:
            procs.stop_all()


def _wait(what: str, check: Callable[[], object], timeout: float, log: Path,
          proc: subprocess.Popen[bytes]) -> object:
    """``check()`` once it is true; fails after ``timeout`` or when ``proc`` (`run`) ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"`run` exited ({proc.returncode}) before the {what}; "
                                 f"{log}:\n{log.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout:.0f} s; {log}:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes], sidecars: list[ProcessRef]) -> None:
    """Stop what the test started, by PID: `run` (which stops its sidecar), then any sidecar
    of it still running."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for ref in sidecars:
        if is_running(ref):
            os.kill(ref.pid, signal.SIGKILL)


def test_run_without_port_is_a_client_only_workload(mesh: Mesh) -> None:
    """Item 5: no --port; the command has no PORT, calls catalog by name through its
    sidecar with its own identity, and the sidecar has no inbound listener: it is connected
    but no endpoint of `batch`."""
    done = mesh.tmp / "client-done"
    proc, out, err = mesh.start_run("client", CLIENT_JOB, str(done))
    sidecars: list[ProcessRef] = []
    try:
        _wait("answer from catalog", lambda: "peer " in out.read_text(), 60, err, proc)
        with mesh.cp.client() as api:
            batch = [p for p in api.get("/v1/proxies").json()["items"]
                     if p["service"] == "batch"]
            endpoints = api.get("/v1/endpoints/default/batch").json()["items"]
        assert len(batch) == 1 and endpoints == [], (batch, endpoints)
        done.touch()
        assert proc.wait(30) == 0, err.read_text()
    finally:
        _stop(proc, sidecars)
    lines = out.read_text().splitlines()
    assert lines == ["no port", "peer spiffe://gossamer.local/ns/default/sa/batch"]
    match = STARTED.search(err.read_text())
    assert match is not None, err.read_text()
    log = re.search(r"log (\S+)\)", err.read_text())
    assert log is not None
    assert "inbound=off" in Path(log.group(1)).read_text()


def _calls(out: Path) -> list[tuple[float, str]]:
    calls = []
    for line in out.read_text().splitlines():
        stamp, _, result = line.partition(" ")
        calls.append((float(stamp), result))
    return calls


def test_run_restarts_a_killed_sidecar_and_the_command_goes_on(mesh: Mesh) -> None:
    """Item 4: `kill -9` of the sidecar under a running command: `run` says so, starts a new
    sidecar on the same ports with a fresh join token, the command's calls through the
    unchanged HTTP_PROXY succeed again, and `run` ends with the command's exit code and
    leaves no sidecar behind."""
    stop = mesh.tmp / "loop-stop"
    calls_file = mesh.tmp / "loop-calls"
    calls_file.touch()
    proc, out, err = mesh.start_run("loop", LOOP_JOB, str(calls_file), str(stop),
                                   port=free_port())
    sidecars: list[ProcessRef] = []
    try:
        first = _wait("sidecar start", lambda: STARTED.search(err.read_text()), 40, err, proc)
        assert isinstance(first, re.Match)
        first_pid, admin = int(first.group(1)), first.group(2)
        sidecars.append(ProcessRef(first_pid, proc_start_time(first_pid)))
        _wait("call through the sidecar",
              lambda: any(r == "200" for _, r in _calls(calls_file)), 40, err, proc)
        killed_at = time.time()
        os.kill(first_pid, signal.SIGKILL)
        again = _wait("restart", lambda: RESTARTED.search(err.read_text()), 30, err, proc)
        assert isinstance(again, re.Match)
        second_pid = int(again.group(1))
        sidecars.append(ProcessRef(second_pid, proc_start_time(second_pid)))
        _wait("call after the restart",
              lambda: any(t > killed_at and r == "200" for t, r in _calls(calls_file)), 40, err,
              proc)
        _wait("word that it is ready", lambda: "sidecar for batch ready again" in err.read_text(),
              30, err, proc)
        assert httpx.get(f"http://{admin}/ready", timeout=5).status_code == 200
        stop.touch()
        assert proc.wait(30) == 0, err.read_text()
    finally:
        _stop(proc, sidecars)
    text = err.read_text()
    assert second_pid != first_pid
    assert f"sidecar for batch (pid {first_pid}) exited with code -9; restarting" in text, text
    assert any(t > killed_at and r != "200" for t, r in _calls(calls_file))
    assert out.read_text().strip() == "job done"
    assert not any(is_running(ref) for ref in sidecars)
