"""A sidecar with ``GOSSAMER_PROXY_WORKERS=2``: a supervisor and two worker processes, joined to
a real control plane, with real sockets (SO_REUSEPORT) and a real app behind it.

The mesh is PERMISSIVE so the tests can talk plaintext HTTP straight to the inbound port. Which
worker served a request is read from /proc: the app answers with the source port of the
sidecar's connection to it, and /proc tells which worker process owns that socket.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.control_helpers import (
    ControlPlaneProcess,
    client_ssl_context,
    join,
    running_control_plane,
)
from tests.process_harness import Proc, Processes, wait_port, wait_ready
from tests.sidecar_harness import free_port

PORT_APP = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        body = json.dumps({"peer_port": self.client_address[1], "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.daemon_threads = True
server.serve_forever()
"""


def _mesh_config(mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "MeshConfig",
        "metadata": {"name": "default"},
        "spec": {"mtls": {"mode": mode}},
    }


@dataclass
class Sidecar:
    proc: Proc
    cp: ControlPlaneProcess

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.proc.ports['admin']}"

    @property
    def inbound(self) -> str:
        return f"http://127.0.0.1:{self.proc.ports['inbound']}"

    def config(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.admin}/config", timeout=5).json()
        return data

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.config()["workers"]]

    def requests_total(self) -> int:
        text = httpx.get(f"{self.admin}/metrics", timeout=5).text
        return sum(
            int(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('gossamer_requests_total{direction="inbound"')
        )

    def get_fresh(self, n: int) -> list[httpx.Response]:
        """``n`` requests, each on a new connection (the kernel picks a worker per connection)."""
        out = []
        for i in range(n):
            with httpx.Client(timeout=5) as client:
                out.append(client.get(f"{self.inbound}/r{i}"))
        return out


def start_sidecar(procs: Processes, cp: ControlPlaneProcess, name: str, app_port: int) -> Sidecar:
    """The harness's sidecar, with two workers and a TCP upstream listener for ``db``."""
    db_port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GOSSAMER_PROXY_WORKERS", "2")
        patch.setenv("GOSSAMER_PROXY_UPSTREAMS", f"db={db_port}")
        proc = procs.sidecar(cp, name, "catalog", app_port)
    proc.ports["db"] = db_port
    sidecar = Sidecar(proc, cp)
    wait_ready(proc)
    return sidecar


def socket_owners(local_port: int, pids: list[int]) -> set[int]:
    """Which of ``pids`` hold a TCP socket whose local port is ``local_port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                    inodes.add(f"socket:[{fields[9]}]")
    owners = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else ():
            try:
                if os.readlink(fd) in inodes:
                    owners.add(pid)
            except OSError:
                continue
    return owners


def serving_pids(sidecar: Sidecar, responses: list[httpx.Response]) -> set[int]:
    pids = sidecar.worker_pids()
    found: set[int] = set()
    for port in {r.json()["peer_port"] for r in responses}:
        found |= socket_owners(port, pids)
    return found


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def is_ready(sidecar: Sidecar) -> bool:
    return httpx.get(f"{sidecar.admin}/ready", timeout=5).status_code == 200


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is gone too
    except (FileNotFoundError, ProcessLookupError):  # reaped before, or while, it was read
        return True


def all_applied(sidecar: Sidecar) -> bool:
    config = sidecar.config()
    return all(w["applied_version"] == config["version"] for w in config["workers"])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Processes, Sidecar]]:
    tmp = tmp_path_factory.mktemp("workers")
    with running_control_plane(tmp / "cp") as cp:
        with cp.client() as api:
            assert api.post("/v1/resources", json=_mesh_config("PERMISSIVE")).status_code == 200
        procs = Processes(tmp)
        try:
            app_script = tmp / "port_app.py"
            app_script.write_text(PORT_APP)
            port = free_port()
            app = procs.spawn("app", [sys.executable, str(app_script), str(port)])
            app.ports["app"] = port
            wait_port(port)
            yield procs, start_sidecar(procs, cp, "catalog-sidecar", port)
        finally:
            procs.stop_all()


def test_connections_are_spread_over_both_workers(mesh: tuple[Processes, Sidecar]) -> None:
    """Connections to the one inbound port are served by both worker processes."""
    _, sidecar = mesh
    responses = sidecar.get_fresh(30)
    assert [r.status_code for r in responses] == [200] * 30
    pids = sidecar.worker_pids()
    assert len(set(pids)) == 2 and sidecar.proc.proc.pid not in pids
    assert serving_pids(sidecar, responses) == set(pids)


def test_metrics_count_every_request_across_workers(mesh: tuple[Processes, Sidecar]) -> None:
    """/metrics on the supervisor adds up the workers: the total grows by what was sent."""
    _, sidecar = mesh
    before = sidecar.requests_total()
    responses = sidecar.get_fresh(25)
    assert all(r.status_code == 200 for r in responses)
    assert sidecar.requests_total() - before == 25
    text = httpx.get(f"{sidecar.admin}/metrics", timeout=5).text
    assert 'gossamer_proxy_workers{state="running"} 2' in text


def test_config_change_reaches_every_worker(mesh: tuple[Processes, Sidecar]) -> None:
    """Switching mTLS to STRICT is applied by both workers: plaintext is refused on each."""
    _, sidecar = mesh
    with sidecar.cp.client() as api:
        assert api.post("/v1/resources", json=_mesh_config("STRICT")).status_code == 200
    try:
        wait_for(lambda: sidecar.config()["snapshot"]["inbound"]["mtls"] == "STRICT", 5, "STRICT")
        wait_for(lambda: all_applied(sidecar) and is_ready(sidecar), 5, "workers to apply")
        refused = sidecar.get_fresh(20)
        assert [r.status_code for r in refused] == [400] * 20
        assert {r.headers["x-gossamer-error"] for r in refused} == {"mtls-required"}
    finally:
        with sidecar.cp.client() as api:
            api.post("/v1/resources", json=_mesh_config("PERMISSIVE"))
        wait_for(lambda: sidecar.config()["snapshot"]["inbound"]["mtls"] == "PERMISSIVE", 5, "")
        wait_for(lambda: all_applied(sidecar) and is_ready(sidecar), 5, "workers to apply")
    assert [r.status_code for r in sidecar.get_fresh(10)] == [200] * 10


def test_tcp_upstream_port_is_served_by_the_workers(mesh: tuple[Processes, Sidecar]) -> None:
    """The TCP upstream port is bound by the workers: connections for ``db`` (not a mesh
    service) are accepted and refused as unknown-service, and counted in /metrics."""
    _, sidecar = mesh

    def refused() -> int:
        text = httpx.get(f"{sidecar.admin}/metrics", timeout=5).text
        prefix = 'gossamer_proxy_errors_total{direction="outbound",cause="unknown-service"} '
        lines = text.splitlines()
        return sum(int(line[len(prefix) :]) for line in lines if line.startswith(prefix))

    before = refused()
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", sidecar.proc.ports["db"]), timeout=5) as conn:
            conn.settimeout(5)
            assert conn.recv(1) == b""  # closed by the worker
    wait_for(lambda: refused() - before == 10, 5, "ten refusals counted")


def test_killed_worker_is_restarted_and_traffic_continues(
    mesh: tuple[Processes, Sidecar],
) -> None:
    """SIGKILL of a worker: the other keeps serving, the supervisor starts a new one, which
    gets the config and serves too; counters do not go back."""
    _, sidecar = mesh
    total = sidecar.requests_total()
    old = sidecar.worker_pids()
    os.kill(old[0], signal.SIGKILL)
    wait_for(lambda: process_gone(old[0]), 5, "the worker to die")
    # Fresh connections all through the restart: the new worker must not take any before it
    # has the config (it listens only once the config from init is in force).
    statuses: list[int] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(statuses) < 400:
        statuses += [r.status_code for r in sidecar.get_fresh(5)]
        restarted = sidecar.worker_pids()[0] not in (None, old[0]) and is_ready(sidecar)
        if restarted and len(statuses) >= 10:
            break
    assert len(statuses) >= 10 and set(statuses) == {200}, statuses
    wait_for(lambda: sidecar.worker_pids()[0] not in (None, old[0]) and is_ready(sidecar), 10,
             "a restarted, ready worker")  # fmt: skip
    new = sidecar.worker_pids()
    assert new[1] == old[1]
    worker = sidecar.config()["workers"][0]
    assert worker["restarts"] == 1 and worker["applied_version"] == sidecar.config()["version"]
    responses = sidecar.get_fresh(30)
    assert [r.status_code for r in responses] == [200] * 30
    assert serving_pids(sidecar, responses) == set(new)
    assert sidecar.requests_total() >= total + 40
    assert "restarting it" in sidecar.proc.log()


def test_sigterm_stops_supervisor_and_workers(tmp_path: Path) -> None:
    """SIGTERM to the sidecar drains and stops every worker, then the supervisor exits 0."""
    with running_control_plane(tmp_path / "cp") as cp:
        procs = Processes(tmp_path)
        try:
            port = free_port()
            script = tmp_path / "port_app.py"
            script.write_text(PORT_APP)
            app = procs.spawn("app", [sys.executable, str(script), str(port)])
            wait_port(port)
            sidecar = start_sidecar(procs, cp, "sidecar", port)
            pids = sidecar.worker_pids()
            assert all(not process_gone(pid) for pid in pids)
            sidecar.proc.proc.send_signal(signal.SIGTERM)
            assert sidecar.proc.proc.wait(timeout=15) == 0
            assert [pid for pid in pids if os.path.exists(f"/proc/{pid}")] == []
            app.stop()
        finally:
            procs.stop_all()


def test_workers_exit_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves the supervisor no time to drain; its workers see the channel close,
    drain on their own and exit, so nothing is left listening."""
    with running_control_plane(tmp_path / "cp") as cp:
        procs = Processes(tmp_path)
        try:
            port = free_port()
            script = tmp_path / "port_app.py"
            script.write_text(PORT_APP)
            procs.spawn("app", [sys.executable, str(script), str(port)])
            wait_port(port)
            sidecar = start_sidecar(procs, cp, "sidecar", port)
            pids = sidecar.worker_pids()
            sidecar.proc.proc.kill()
            sidecar.proc.proc.wait(timeout=5)
            wait_for(lambda: all(process_gone(pid) for pid in pids), 10, "workers to exit")
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", sidecar.proc.ports["inbound"]), 1).close()
        finally:
            procs.stop_all()


def served_expiries(port: int, context: ssl.SSLContext, n: int) -> set[float]:
    """The notAfter of the certificate the inbound port presents, over ``n`` handshakes."""
    out = set()
    for _ in range(n):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            cert = tls.getpeercert()
            assert cert is not None
            out.add(ssl.cert_time_to_seconds(str(cert["notAfter"])))
    return out


def test_renewed_certificate_reaches_every_worker(tmp_path: Path) -> None:
    """With 4 s certificates the supervisor renews every ~2 s; each renewal is loaded by every
    worker, so all handshakes (spread over both workers) present the newest certificate."""
    with running_control_plane(tmp_path / "cp", "--cert-lifetime", "4s") as cp:
        procs = Processes(tmp_path)
        try:
            port = free_port()
            script = tmp_path / "port_app.py"
            script.write_text(PORT_APP)
            procs.spawn("app", [sys.executable, str(script), str(port)])
            wait_port(port)
            sidecar = start_sidecar(procs, cp, "sidecar", port)
            caller = join(cp, "caller")
            context = client_ssl_context(cp.root_pem, caller.cert_pem, caller.key_pem)
            context.check_hostname = False
            inbound = sidecar.proc.ports["inbound"]
            first = max(served_expiries(inbound, context, 4))
            deadline = time.monotonic() + 10
            seen: set[float] = set()
            while time.monotonic() < deadline:
                seen = served_expiries(inbound, context, 16)
                if len(seen) == 1 and min(seen) > first:
                    break
                time.sleep(0.1)
            assert len(seen) == 1 and min(seen) > first, (first, seen)
            assert "renewed certificate" in sidecar.proc.log()
        finally:
            procs.stop_all()
