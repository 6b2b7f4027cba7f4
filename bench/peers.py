"""The peers every path is compared with: the nginx backend, nginx and HAProxy as proxies.

Owns rendering the config templates in ``bench/templates/`` and starting each peer as one
foreground process (nginx with ``master_process off``, HAProxy with ``nbthread 1``), so the
CPU and memory of a path are those of the processes listed for it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from string import Template

from bench.procs import Proc, ProcessGroup, free_port, wait_port

__all__ = [
    "BODY",
    "BULK_FILE",
    "Backend",
    "TlsFiles",
    "start_backend",
    "start_haproxy_h2",
    "start_haproxy_http",
    "start_haproxy_tls_pair",
    "start_nginx_proxy",
]

TEMPLATES = Path(__file__).resolve().parent / "templates"
# Exactly 200 bytes: what every HTTP path returns.
BODY = ("gossamer-bench " * 14 + "0123456789")[:200]
BULK_FILE = "/files/bulk.bin"
BULK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Backend:
    """The nginx backend: HTTP/1.1 on ``port``, h2c on ``h2_port``."""

    proc: Proc
    port: int
    h2_port: int


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for an HAProxy pair: client and server cert+key bundles and the mesh root."""

    client_pem: Path
    server_pem: Path
    ca_file: Path


def _render(name: str, target: Path, **values: object) -> Path:
    text = Template((TEMPLATES / name).read_text()).substitute(
        {k: str(v) for k, v in values.items()}
    )
    target.write_text(text)
    return target


def _nginx_dirs(workdir: Path) -> None:
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / "tmp" / sub).mkdir(parents=True, exist_ok=True)


def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise RuntimeError(f"{name} is not installed (run scripts/ensure-debian-packages {name})")
    return path


def start_backend(group: ProcessGroup, bulk_bytes: int = BULK_BYTES) -> Backend:
    """nginx returning the 200-byte body, plus ``/files/bulk.bin`` of ``bulk_bytes``."""
    workdir = group.workdir / "nginx-backend"
    workdir.mkdir(parents=True, exist_ok=True)
    _nginx_dirs(workdir)
    www = workdir / "www" / "files"
    www.mkdir(parents=True, exist_ok=True)
    with open(www / "bulk.bin", "wb") as f:
        chunk = bytes(range(256)) * 4096
        left = bulk_bytes
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    port, h2_port = free_port(), free_port()
    conf = _render(
        "nginx-backend.conf",
        workdir / "nginx.conf",
        dir=workdir,
        port=port,
        h2_port=h2_port,
        body=BODY,
    )
    proc = group.spawn(
        "nginx-backend", [_binary("nginx"), "-p", str(workdir), "-c", str(conf), "-e", "stderr"]
    )
    wait_port(port, proc=proc)
    wait_port(h2_port, proc=proc)
    return Backend(proc, port, h2_port)


def start_nginx_proxy(group: ProcessGroup, backend_port: int) -> Proc:
    workdir = group.workdir / "nginx-proxy"
    workdir.mkdir(parents=True, exist_ok=True)
    _nginx_dirs(workdir)
    port = free_port()
    conf = _render(
        "nginx-proxy.conf",
        workdir / "nginx.conf",
        dir=workdir,
        port=port,
        backend_port=backend_port,
    )
    proc = group.spawn(
        "nginx-proxy", [_binary("nginx"), "-p", str(workdir), "-c", str(conf), "-e", "stderr"]
    )
    proc.ports["listen"] = port
    wait_port(port, proc=proc)
    return proc


def _haproxy(group: ProcessGroup, name: str, template: str, **values: object) -> Proc:
    port = free_port()
    conf = _render(template, group.workdir / f"{name}.cfg", port=port, **values)
    proc = group.spawn(name, [_binary("haproxy"), "-db", "-f", str(conf)])
    proc.ports["listen"] = port
    wait_port(port, proc=proc)
    return proc


def start_haproxy_http(group: ProcessGroup, backend_port: int) -> Proc:
    """Path 2: one HAProxy, mode http, keep-alive and ``http-reuse always``."""
    return _haproxy(group, "haproxy-http", "haproxy-http.cfg", backend_port=backend_port)


def start_haproxy_h2(group: ProcessGroup, backend_h2_port: int) -> Proc:
    """Path 7: one HAProxy speaking h2c to the client and to the backend."""
    return _haproxy(group, "haproxy-h2", "haproxy-h2.cfg", backend_port=backend_h2_port)


def start_haproxy_tls_pair(
    group: ProcessGroup, name: str, backend_port: int, tls: TlsFiles, *, mode: str
) -> tuple[Proc, Proc]:
    """Two HAProxies: the first originates TLS with a client certificate, the second terminates
    it and requires and verifies that certificate. ``mode`` is ``http`` or ``tcp``.

    Returns ``(origin, terminator)``; clients connect to ``origin.ports["listen"]``.
    """
    http_options = "    option http-keep-alive\n    http-reuse always\n" if mode == "http" else ""
    alpn = "http/1.1" if mode == "http" else "gossamer-tcp"
    terminator = _haproxy(
        group,
        f"{name}-server",
        "haproxy-tls-terminate.cfg",
        mode=mode,
        http_options=http_options,
        backend_port=backend_port,
        server_pem=tls.server_pem,
        ca_file=tls.ca_file,
        alpn=alpn,
    )
    origin = _haproxy(
        group,
        f"{name}-client",
        "haproxy-tls-origin.cfg",
        mode=mode,
        http_options=http_options,
        peer_port=terminator.ports["listen"],
        client_pem=tls.client_pem,
        ca_file=tls.ca_file,
        alpn=alpn,
    )
    return origin, terminator
