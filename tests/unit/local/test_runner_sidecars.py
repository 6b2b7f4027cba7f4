"""What the supervisor behind ``gossamer up`` hands each sidecar (no process is started)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gossamer.local.meshfile import parse_mesh_text
from gossamer.local.runner import Supervisor, _Child
from gossamer.proxy.process.settings import ProxySettings

MESH = """
apiVersion: gossamer.dev/v1alpha1
kind: Mesh
metadata: {name: shop}
spec:
  ingress: {port: 9000, service: web, workers: 2}
  services:
    - name: web
      command: ["{python}", "-m", "http.server", "{port}"]
      sidecar: {workers: 3}
    - name: db
      command: ["{python}", "-m", "http.server", "{port}"]
"""


class TokenClient:
    def join_token(self, service: str, namespace: str = "default") -> str:
        return f"tok-{service}"


def test_mesh_file_workers_reach_each_sidecar_and_the_ingress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12 item 8: `sidecar.workers` of a service and `ingress.workers` become the
    GOSSAMER_PROXY_WORKERS of those sidecars; a service without it gets one worker."""
    supervisor = Supervisor(parse_mesh_text(MESH), tmp_path, stop=threading.Event(),
                            log=lambda line: None, parent_env={})
    supervisor._client = TokenClient()  # type: ignore[assignment]
    launched: list[_Child] = []
    monkeypatch.setattr(supervisor, "_launch", launched.append)
    spec = supervisor.mesh.mesh.spec
    for service in spec.services:
        supervisor._start_replica(service.name, "default", 0, service)
    assert spec.ingress is not None
    supervisor._start_ingress(spec.ingress)
    workers = {child.name: ProxySettings.from_env(child.make_env()).listen.workers
               for child in launched if child.role != "app"}
    assert workers == {"web-0-proxy": 3, "db-0-proxy": 1, "ingress": 2}
