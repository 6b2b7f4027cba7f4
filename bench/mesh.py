"""Gossamer processes for the suite: a real control plane and real sidecars joined to it.

Owns starting ``python -m gossamer.control`` on free ports (ready when it prints its ready
line), applying resources through its config API, starting ``python -m gossamer.proxy``
sidecars with one-time join tokens (so they get real certificates from the mesh CA over the
real stream), waiting for a sidecar to be ready, and issuing key pairs from the same CA for the
HAProxy pair (``CertificateAuthority.issue_keypair``).
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.peers import TlsFiles
from bench.procs import Proc, ProcessGroup, free_port

__all__ = [
    "ControlPlane",
    "Sidecar",
    "issue_haproxy_certs",
    "start_control_plane",
    "start_sidecar",
    "wait_ready",
]

READY = re.compile(r"gossamer control plane ready api=(\S+):(\d+) stream=(\S+):(\d+)")
START_TIMEOUT = 30.0
API_VERSION = "gossamer.dev/v1alpha1"


@dataclass
class ControlPlane:
    """A running control plane process and how to reach it."""

    proc: Proc
    data_dir: Path
    api_url: str
    stream_host: str
    stream_port: int

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "ca" / "root.crt"

    def client(self, timeout: float = 30.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout)

    def apply(self, documents: Sequence[Mapping[str, Any]]) -> None:
        """Apply resources (all or none); raise with the API's message when refused."""
        with self.client() as api:
            response = api.post(
                "/v1/resources",
                content=json.dumps(list(documents)),
                headers={"Content-Type": "application/json"},
            )
        if response.status_code != 200:
            raise RuntimeError(f"apply refused ({response.status_code}): {response.text[:2000]}")

    def kind_exists(self, kind: str) -> bool:
        """Whether the config API knows resources of ``kind`` (404 for an unknown kind)."""
        with self.client() as api:
            return api.get(f"/v1/resources/{kind}").status_code == 200

    def proxies(self) -> list[dict[str, Any]]:
        with self.client() as api:
            response = api.get("/v1/proxies")
            response.raise_for_status()
            items: list[dict[str, Any]] = response.json()["items"]
            return items

    def join_token(self, service: str) -> str:
        with self.client() as api:
            response = api.post("/v1/join-tokens", json={"service": service})
            response.raise_for_status()
            return str(response.json()["token"])


def resource(kind: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def start_control_plane(group: ProcessGroup, name: str = "control-plane") -> ControlPlane:
    """Start a control plane with a fresh data dir; return once it printed its ready line."""
    data_dir = group.workdir / f"{name}-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-m",
        "gossamer.control",
        "--data-dir",
        str(data_dir),
        "--api-addr",
        "127.0.0.1:0",
        "--stream-addr",
        "127.0.0.1:0",
        "--log-level",
        "warning",
    ]
    proc = group.spawn(name, args, stdout=subprocess.PIPE)
    stdout = proc.popen.stdout
    assert stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    seen = b""
    while time.monotonic() < deadline and proc.alive():
        ready, _, _ = select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = stdout.readline()
        seen += line
        match = READY.search(line.decode(errors="replace"))
        if match:
            return ControlPlane(
                proc,
                data_dir,
                f"http://{match.group(1)}:{match.group(2)}",
                match.group(3),
                int(match.group(4)),
            )
        if not line:
            break
    raise RuntimeError(f"control plane did not start: {seen!r}\n{proc.log()}")


@dataclass
class Sidecar:
    """A sidecar process and its listeners (``outbound``, ``inbound``, ``admin`` ports)."""

    proc: Proc
    service: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def port(self, name: str) -> int:
        return self.proc.ports[name]

    def config(self) -> dict[str, Any]:
        response = httpx.get(f"http://127.0.0.1:{self.port('admin')}/config", timeout=5)
        response.raise_for_status()
        config: dict[str, Any] = response.json()
        return config


def start_sidecar(
    group: ProcessGroup,
    cp: ControlPlane,
    name: str,
    service: str,
    *,
    app_port: int | None = None,
    outbound: bool = True,
    inbound: bool = True,
    extra_env: Mapping[str, str] | None = None,
) -> Sidecar:
    """Start ``python -m gossamer.proxy`` for ``service``, joined with a fresh token."""
    ports = {"admin": free_port()}
    if outbound:
        ports["outbound"] = free_port()
    if inbound:
        ports["inbound"] = free_port()
    env = {
        "GOSSAMER_PROXY_SERVICE": service,
        "GOSSAMER_PROXY_OUTBOUND_ADDR": (f"127.0.0.1:{ports['outbound']}" if outbound else "off"),
        "GOSSAMER_PROXY_INBOUND_ADDR": f"127.0.0.1:{ports['inbound']}" if inbound else "off",
        "GOSSAMER_PROXY_ADMIN_ADDR": f"127.0.0.1:{ports['admin']}",
        "GOSSAMER_PROXY_CONTROL_ADDR": f"{cp.stream_host}:{cp.stream_port}",
        "GOSSAMER_PROXY_CA_FILE": str(cp.ca_file),
        "GOSSAMER_PROXY_JOIN_TOKEN": cp.join_token(service),
        "GOSSAMER_PROXY_WORKDIR": str(group.workdir / "sidecars" / name),
        "GOSSAMER_LOG_LEVEL": "WARNING",
    }
    if app_port is not None:
        env["GOSSAMER_PROXY_APP_ADDR"] = f"127.0.0.1:{app_port}"
    env.update(extra_env or {})
    proc = group.spawn(name, [sys.executable, "-m", "gossamer.proxy"], env)
    proc.ports.update(ports)
    return Sidecar(proc, service)


def wait_ready(sidecar: Sidecar, timeout: float = 30.0) -> None:
    """Wait until the sidecar's admin ``/ready`` answers 200 (certificate and config in)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not sidecar.proc.alive():
            raise RuntimeError(f"{sidecar.proc.name} exited:\n{sidecar.proc.log()}")
        try:
            response = httpx.get(f"http://127.0.0.1:{sidecar.port('admin')}/ready", timeout=1)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"{sidecar.proc.name} not ready after {timeout}s: {last}")


def issue_haproxy_certs(cp: ControlPlane, workdir: Path, client: str, server: str) -> TlsFiles:
    """Cert+key bundles from the mesh CA for an HAProxy pair standing in for two services."""
    from gossamer.control.ca import CertificateAuthority
    from gossamer.identity.spiffe import SpiffeId

    ca = CertificateAuthority.load_or_create(cp.data_dir)
    paths: list[Path] = []
    for service in (client, server):
        cert, key = ca.issue_keypair(
            SpiffeId(ca.trust_domain, "default", service), timedelta(hours=12)
        )
        path = workdir / f"haproxy-{service}.pem"
        path.write_bytes(cert + key)
        path.chmod(0o600)
        paths.append(path)
    return TlsFiles(client_pem=paths[0], server_pem=paths[1], ca_file=cp.ca_file)
