"""What the suite measures: every path of issue 3, built from real processes on 127.0.0.1.

Owns starting the backend, the peers and the Gossamer processes, probing each path once (a
path that does not answer 200 with the backend's body is reported "not available" with the
reason, never measured), and describing each path as a :class:`PathSpec`: its URL, its
comparison group, and the proxy processes whose CPU and memory are charged to it.

Gossamer's paths:

- 4, one hop (plaintext): wrk → sidecar ``edge`` inbound listener → the backend as its local
  app. The mesh's ``MeshConfig`` (pushed by the control plane) is PERMISSIVE, so the inbound
  listener accepts plaintext after its TLS/plaintext detection; the request then runs through
  the same HTTP/1.1 downstream/upstream code, app pool and per-request metrics as mTLS traffic.
  (The outbound side always originates mTLS, so it cannot make a plaintext hop without special
  code; it is measured in path 5.)
- 5, the mesh pair: wrk (``Host: backend``) → sidecar ``bench-client`` outbound (route table,
  balancer, pooled mTLS with the SPIFFE ID checked) → sidecar ``backend`` inbound (mTLS
  terminated, client certificate verified) → the backend.
- 6, opaque TCP: wrk (a 64 MiB file) → ``bench-client``'s TCP upstream listener
  (``GOSSAMER_PROXY_UPSTREAMS``) → mTLS (ALPN ``gossamer-tcp``) → sidecar ``bulk`` → backend;
  compared with an HAProxy pair in ``mode tcp`` with the same TLS set-up.
- 7, HTTP/2: h2load (h2c) → sidecar ``h2edge`` inbound (plaintext, PERMISSIVE) → backend's h2c
  port; compared with one HAProxy with ``proto h2`` on both sides.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

import gossamer
from bench.load import LoadError, run_h2load, run_wrk
from bench.mesh import (
    ControlPlane,
    Sidecar,
    issue_haproxy_certs,
    resource,
    start_control_plane,
    start_sidecar,
    wait_ready,
)
from bench.peers import (
    BODY,
    BULK_FILE,
    Backend,
    start_backend,
    start_haproxy_h2,
    start_haproxy_http,
    start_haproxy_tls_pair,
    start_nginx_proxy,
)
from bench.procs import Proc, ProcessGroup, free_port

__all__ = ["GROUPS", "PathSpec", "Topology", "build_topology"]

# group -> (baseline path for added latency, reference path for ratios)
GROUPS: dict[str, tuple[str, str]] = {
    "http": ("direct", "haproxy"),
    "pair": ("direct", "haproxy-pair"),
    "tcp": ("tcp-direct", "tcp-haproxy"),
    "h2": ("h2-direct", "h2-haproxy"),
}
PROBE_TIMEOUT = 20.0


@dataclass
class PathSpec:
    """One measured path."""

    key: str
    number: int  # the path's number in issue 3
    label: str
    group: str
    protocol: str  # "http1", "bulk" or "h2"
    url: str
    host: str | None = None  # Host header (HTTP/1.1) or :authority (h2)
    procs: list[Proc] = field(default_factory=list)  # proxy processes charged to the path
    gossamer: bool = False
    available: bool = True
    reason: str = ""


@dataclass
class Topology:
    paths: list[PathSpec]
    backend: Backend
    control_plane: ControlPlane | None
    sidecars: dict[str, Sidecar]

    def path(self, key: str) -> PathSpec | None:
        return next((p for p in self.paths if p.key == key), None)


def tcp_relay_present() -> tuple[bool, str]:
    """Whether the sidecar has the opaque TCP relay with ``GOSSAMER_PROXY_UPSTREAMS``."""
    if importlib.util.find_spec("gossamer.proxy.tcp.proxy") is None:
        return False, "gossamer.proxy.tcp.proxy does not exist yet"
    source = Path(gossamer.__file__).parent / "proxy" / "process" / "settings.py"  # may be compiled
    if "UPSTREAMS" not in source.read_text():
        return False, "GOSSAMER_PROXY_UPSTREAMS is not read by proxy/process/settings.py yet"
    return True, ""


def http2_present() -> tuple[bool, str]:
    """Whether the sidecar has HTTP/2 support (``gossamer.proxy.h2`` session and handlers)."""
    if importlib.util.find_spec("gossamer.proxy.h2") is None:
        return False, "gossamer.proxy.h2 does not exist yet"
    for module in ("gossamer.protocol.h2.session",):
        if importlib.util.find_spec(module) is None:
            return False, f"{module} does not exist yet"
    return True, ""


def _probe_http(url: str, host: str | None) -> None:
    """Wait until ``url`` answers 200 with the backend's body (discovery, endpoints, health)."""
    deadline = time.monotonic() + PROBE_TIMEOUT
    last = ""
    headers = {"Host": host} if host else {}
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, headers=headers, timeout=5)
            if response.status_code == 200 and response.text == BODY:
                return
            gossamer_error = response.headers.get("x-gossamer-error", "")
            last = f"{response.status_code} {gossamer_error} {response.text[:200]!r}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    raise RuntimeError(f"probe of {url} (Host {host}) failed: {last}")


def _probe_bulk(url: str) -> None:
    deadline = time.monotonic() + PROBE_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=10)
            if response.status_code == 200 and len(response.content) > 0:
                return
            last = f"{response.status_code}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    raise RuntimeError(f"probe of {url} failed: {last}")


def _probe_h2(url: str, authority: str | None) -> None:
    deadline = time.monotonic() + PROBE_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        try:
            run_h2load(url, clients=1, streams=1, requests=20, authority=authority)
            return
        except LoadError as exc:
            last = str(exc)[-300:]
        time.sleep(0.2)
    raise RuntimeError(f"h2c probe of {url} failed: {last}")


def _try(spec: PathSpec, setup: Callable[[], None]) -> None:
    """Run a path's set-up and probe; on failure mark it unavailable with the reason."""
    if not spec.available:
        return
    try:
        setup()
    except (RuntimeError, OSError, LoadError, httpx.HTTPError) as exc:
        spec.available = False
        spec.reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)


def build_topology(group: ProcessGroup, *, bulk_bytes: int) -> Topology:
    """Start everything and probe every path; paths that cannot run say why."""
    backend = start_backend(group, bulk_bytes)
    base = f"http://127.0.0.1:{backend.port}"
    paths: list[PathSpec] = []
    tcp_ok, tcp_reason = tcp_relay_present()
    h2_ok, h2_reason = http2_present()

    def add(spec: PathSpec) -> PathSpec:
        paths.append(spec)
        return spec

    add(PathSpec("direct", 1, "direct to the backend", "http", "http1", f"{base}/"))
    haproxy = start_haproxy_http(group, backend.port)
    add(
        PathSpec(
            "haproxy",
            2,
            "HAProxy reverse proxy",
            "http",
            "http1",
            f"http://127.0.0.1:{haproxy.ports['listen']}/",
            procs=[haproxy],
        )
    )
    nginx = start_nginx_proxy(group, backend.port)
    add(
        PathSpec(
            "nginx",
            3,
            "nginx reverse proxy",
            "http",
            "http1",
            f"http://127.0.0.1:{nginx.ports['listen']}/",
            procs=[nginx],
        )
    )

    cp = start_control_plane(group)
    documents = [
        resource("MeshConfig", "default", {"mtls": {"mode": "PERMISSIVE"}}),
        resource("Service", "backend", {}),
        resource("Service", "edge", {}),
        resource(
            "Service", "bench-client", {"calls": ["backend", "bulk"] if tcp_ok else ["backend"]}
        ),
    ]
    if tcp_ok:
        documents.append(resource("Service", "bulk", {"ports": [{"port": 80, "protocol": "tcp"}]}))
    if h2_ok:
        documents.append(
            resource("Service", "h2edge", {"ports": [{"port": 80, "protocol": "http2"}]})
        )
    cp.apply(documents)
    sidecars: dict[str, Sidecar] = {}
    sidecars["edge"] = start_sidecar(
        group, cp, "sidecar-edge", "edge", app_port=backend.port, outbound=False
    )
    sidecars["backend"] = start_sidecar(
        group, cp, "sidecar-backend", "backend", app_port=backend.port, outbound=False
    )
    upstream_port = free_port()
    client_env = {"GOSSAMER_PROXY_UPSTREAMS": f"bulk=127.0.0.1:{upstream_port}"} if tcp_ok else {}
    sidecars["bench-client"] = start_sidecar(
        group, cp, "sidecar-bench-client", "bench-client", inbound=False, extra_env=client_env
    )
    if tcp_ok:
        sidecars["bulk"] = start_sidecar(
            group, cp, "sidecar-bulk", "bulk", app_port=backend.port, outbound=False
        )
    if h2_ok:
        sidecars["h2edge"] = start_sidecar(
            group, cp, "sidecar-h2edge", "h2edge", app_port=backend.h2_port, outbound=False
        )
    for sidecar in sidecars.values():
        wait_ready(sidecar)

    edge = sidecars["edge"]
    one_hop = add(
        PathSpec(
            "gossamer",
            4,
            "Gossamer sidecar, one hop (plaintext)",
            "http",
            "http1",
            f"http://127.0.0.1:{edge.port('inbound')}/",
            procs=[edge.proc],
            gossamer=True,
        )
    )
    _try(one_hop, lambda: _probe_http(one_hop.url, None))

    tls = issue_haproxy_certs(cp, group.workdir, "bench-client", "backend")
    origin, terminator = start_haproxy_tls_pair(
        group, "haproxy-pair", backend.port, tls, mode="http"
    )
    add(
        PathSpec(
            "haproxy-pair",
            5,
            "HAProxy pair, TLS with client certs",
            "pair",
            "http1",
            f"http://127.0.0.1:{origin.ports['listen']}/",
            procs=[origin, terminator],
        )
    )
    client = sidecars["bench-client"]
    pair = add(
        PathSpec(
            "gossamer-pair",
            5,
            "Gossamer sidecar pair, mTLS",
            "pair",
            "http1",
            f"http://127.0.0.1:{client.port('outbound')}/",
            host="backend",
            procs=[client.proc, sidecars["backend"].proc],
            gossamer=True,
        )
    )
    _try(pair, lambda: _probe_http(pair.url, pair.host))

    add(PathSpec("tcp-direct", 6, "direct bulk transfer", "tcp", "bulk", f"{base}{BULK_FILE}"))
    tcp_origin, tcp_terminator = start_haproxy_tls_pair(
        group, "haproxy-tcp", backend.port, tls, mode="tcp"
    )
    add(
        PathSpec(
            "tcp-haproxy",
            6,
            "HAProxy pair, mode tcp, TLS",
            "tcp",
            "bulk",
            f"http://127.0.0.1:{tcp_origin.ports['listen']}{BULK_FILE}",
            procs=[tcp_origin, tcp_terminator],
        )
    )
    tcp_procs = [client.proc, sidecars["bulk"].proc] if tcp_ok else []
    tcp = add(
        PathSpec(
            "tcp-gossamer",
            6,
            "Gossamer TCP relay pair, mTLS",
            "tcp",
            "bulk",
            f"http://127.0.0.1:{upstream_port}{BULK_FILE}",
            procs=tcp_procs,
            gossamer=True,
            available=tcp_ok,
            reason=tcp_reason,
        )
    )
    _try(tcp, lambda: _probe_bulk(tcp.url))

    add(PathSpec("h2-direct", 7, "direct h2c", "h2", "h2", f"http://127.0.0.1:{backend.h2_port}/"))
    haproxy_h2 = start_haproxy_h2(group, backend.h2_port)
    add(
        PathSpec(
            "h2-haproxy",
            7,
            "HAProxy h2c proxy (proto h2 both sides)",
            "h2",
            "h2",
            f"http://127.0.0.1:{haproxy_h2.ports['listen']}/",
            procs=[haproxy_h2],
        )
    )
    h2_procs = [sidecars["h2edge"].proc] if h2_ok else []
    h2_url = f"http://127.0.0.1:{sidecars['h2edge'].port('inbound')}/" if h2_ok else ""
    h2 = add(
        PathSpec(
            "h2-gossamer",
            7,
            "Gossamer sidecar, one hop h2c",
            "h2",
            "h2",
            h2_url,
            procs=h2_procs,
            gossamer=True,
            available=h2_ok,
            reason=h2_reason,
        )
    )
    _try(h2, lambda: _probe_h2(h2.url, None))
    return Topology(paths, backend, cp, sidecars)


def warm_up(spec: PathSpec, seconds: int = 1) -> None:
    """A short unmeasured load (fills pools, warms caches)."""
    if spec.protocol == "h2":
        run_h2load(spec.url, clients=10, streams=10, duration=seconds, authority=spec.host)
    else:
        connections = 4 if spec.protocol == "bulk" else 50
        run_wrk(spec.url, connections=connections, duration=seconds, host=spec.host)
