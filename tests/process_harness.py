"""Test harness: sidecars and apps as real processes, stopped by PID.

Use with ``tests/integration/control_helpers.running_control_plane`` for the control plane.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.integration.control_helpers import ControlPlaneProcess
from tests.sidecar_harness import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Processes:
    """Everything a test started; ``stop_all`` stops each by PID, newest first."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        log_path = self.tmp / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                cwd=ROOT,
            )
        p = Proc(name, proc, log_path)
        self.procs.append(p)
        return p

    def app(self, name: str) -> Proc:
        port = free_port()
        p = self.spawn(name, [sys.executable, str(ROOT / "tests/apps/whoami.py"), str(port), name])
        p.ports["app"] = port
        return p

    def sidecar(
        self,
        cp: ControlPlaneProcess,
        name: str,
        service: str,
        app_port: int | None,
        labels: str = "",
        extra_env: dict[str, str] | None = None,
    ) -> Proc:
        with cp.client() as api:
            token = api.post("/v1/join-tokens", json={"service": service}).json()["token"]
        ports = {k: free_port() for k in ("outbound", "inbound", "admin")}
        env = {
            "GOSSAMER_PROXY_SERVICE": service,
            "GOSSAMER_PROXY_OUTBOUND_ADDR": f"127.0.0.1:{ports['outbound']}",
            "GOSSAMER_PROXY_INBOUND_ADDR": f"127.0.0.1:{ports['inbound']}",
            "GOSSAMER_PROXY_ADMIN_ADDR": f"127.0.0.1:{ports['admin']}",
            "GOSSAMER_PROXY_CONTROL_ADDR": f"{cp.stream_host}:{cp.stream_port}",
            "GOSSAMER_PROXY_CA_FILE": str(cp.data_dir / "ca" / "root.crt"),
            "GOSSAMER_PROXY_JOIN_TOKEN": token,
            "GOSSAMER_PROXY_WORKDIR": str(self.tmp / "proxies" / name),
            "GOSSAMER_PROXY_LABELS": labels,
        }
        if app_port is not None:
            env["GOSSAMER_PROXY_APP_ADDR"] = f"127.0.0.1:{app_port}"
        env.update(extra_env or {})
        p = self.spawn(name, [sys.executable, "-m", "gossamer.proxy"], env)
        p.ports.update(ports)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def wait_ready(p: Proc, timeout: float = 40.0) -> None:
    """Wait until a sidecar's admin /ready answers 200."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if p.proc.poll() is not None:
            raise AssertionError(f"{p.name} exited with {p.proc.returncode}:\n{p.log()}")
        try:
            r = httpx.get(f"http://127.0.0.1:{p.ports['admin']}/ready", timeout=1)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise AssertionError(f"{p.name} not ready after {timeout}s ({last}):\n{p.log()}")


def wait_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")
