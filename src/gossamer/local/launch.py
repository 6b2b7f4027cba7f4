"""How each kind of process is started: command lines, environments, readiness probes.

The sidecar's environment follows ``gossamer.proxy.process.settings``
(``GOSSAMER_PROXY_*``, none inherited from the parent: the runner sets each one it wants,
workers included); apps get ``PORT`` (when they serve) and the proxy variables every common
client reads (``APP_PROXY_VARS``: ``http_proxy``, ``https_proxy``, ``grpc_proxy`` and their
upper-case forms) pointing at their sidecar's outbound port, so that plain service names
(``http://catalog/...``, a gRPC channel to ``greeter:80``, which tunnels with CONNECT) go
through the mesh, and ``no_proxy``/``NO_PROXY`` with the user's entries (but ``*``) and
loopback. README "Which clients use the sidecar" says which client reads which.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = [
    "APP_PROXY_VARS",
    "Probe",
    "SidecarConfig",
    "app_env",
    "base_env",
    "control_argv",
    "http_ok",
    "sidecar_argv",
    "sidecar_env",
    "tcp_open",
    "upstream_env",
    "wait_for",
]

# Set for apps, each to the sidecar's outbound port (grpc_proxy is read by gRPC's C core and
# by grpc-js, lower case only; grpc-go reads HTTPS_PROXY; curl reads http_proxy in lower case
# only, and https_proxy in either).
APP_PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "grpc_proxy")
# Not inherited from the parent: the runner sets the ones above and the bypass list, and the
# others would take calls around the sidecar (no_grpc_proxy replaces no_proxy for gRPC).
_PROXY_VARS = (*APP_PROXY_VARS, "GRPC_PROXY", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy",
               "no_grpc_proxy", "NO_GRPC_PROXY")


# The operator's credentials: with the admin token, app code could mint join tokens for any
# identity (the control plane gets its data directory as --data-dir).
_OPERATOR_VARS = ("GOSSAMER_TOKEN", "GOSSAMER_DATA_DIR")


def base_env(parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent's environment without sidecar settings, proxy variables and the
    operator's credentials."""
    env = dict(os.environ if parent is None else parent)
    for key in list(env):
        if key.startswith("GOSSAMER_PROXY_") or key in _PROXY_VARS or key in _OPERATOR_VARS:
            del env[key]
    env["PYTHONUNBUFFERED"] = "1"
    return env


def control_argv(data_dir: Path, api_port: int, stream_port: int) -> list[str]:
    return [
        sys.executable, "-m", "gossamer.control",
        "--data-dir", str(data_dir),
        "--api-addr", f"127.0.0.1:{api_port}",
        "--stream-addr", f"127.0.0.1:{stream_port}",
    ]


def sidecar_argv() -> list[str]:
    return [sys.executable, "-m", "gossamer.proxy"]


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """What one sidecar needs besides its join token."""

    service: str
    namespace: str
    admin_port: int
    control_addr: str
    ca_file: Path
    workdir: Path
    app_port: int | None = None  # None: no local app (a gateway, a client-only job)
    outbound_port: int | None = None
    inbound_port: int | None = None  # None: no inbound listener (a gateway, a client-only job)
    default_service: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    upstreams: tuple[tuple[str, int], ...] = ()  # (service, local port) TCP listeners
    workers: int = 1  # GOSSAMER_PROXY_WORKERS

    @property
    def admin_address(self) -> str:
        return f"127.0.0.1:{self.admin_port}"


def sidecar_env(
    config: SidecarConfig, join_token: str, parent: Mapping[str, str]
) -> dict[str, str]:
    env = base_env(parent)
    p = "GOSSAMER_PROXY_"
    env[p + "SERVICE"] = config.service
    env[p + "NAMESPACE"] = config.namespace
    env[p + "ADMIN_ADDR"] = config.admin_address
    env[p + "CONTROL_ADDR"] = config.control_addr
    env[p + "CA_FILE"] = str(config.ca_file)
    env[p + "JOIN_TOKEN"] = join_token
    env[p + "WORKDIR"] = str(config.workdir)
    env[p + "LABELS"] = ",".join(f"{k}={v}" for k, v in sorted(config.labels.items()))
    env[p + "WORKERS"] = str(config.workers)
    env[p + "OUTBOUND_ADDR"] = (
        f"127.0.0.1:{config.outbound_port}" if config.outbound_port is not None else "off"
    )
    env[p + "INBOUND_ADDR"] = (
        f"127.0.0.1:{config.inbound_port}" if config.inbound_port is not None else "off"
    )
    if config.app_port is not None:
        env[p + "APP_ADDR"] = f"127.0.0.1:{config.app_port}"
    if config.default_service:
        env[p + "DEFAULT_SERVICE"] = config.default_service
    if config.upstreams:
        env[p + "UPSTREAMS"] = ",".join(
            f"{service}=127.0.0.1:{port}" for service, port in config.upstreams
        )
    return env


def upstream_env(upstreams: tuple[tuple[str, int], ...]) -> dict[str, str]:
    """What the app is told about its TCP upstreams: ``GOSSAMER_UPSTREAM_DB=127.0.0.1:15432``
    (service name upper-cased, ``-`` and ``.`` as ``_``)."""
    return {
        "GOSSAMER_UPSTREAM_" + re.sub(r"[^A-Z0-9]", "_", service.upper()): f"127.0.0.1:{port}"
        for service, port in upstreams
    }


def app_env(
    *,
    port: int | None,
    outbound_port: int,
    parent: Mapping[str, str],
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """An app's environment: ``PORT`` to listen on (none for a job that serves nothing, and
    none inherited), the proxy variables (``APP_PROXY_VARS``) at its sidecar, and ``no_proxy``
    with the user's own entries and loopback (calls to this machine never go through the
    sidecar)."""
    env = base_env(parent)
    env.pop("PORT", None)
    env.update(extra or {})
    if port is not None:
        env["PORT"] = str(port)
    proxy = f"http://127.0.0.1:{outbound_port}"
    bypass = no_proxy(parent.get("NO_PROXY") or parent.get("no_proxy") or "")
    env.update(dict.fromkeys(APP_PROXY_VARS, proxy))
    env.update(NO_PROXY=bypass, no_proxy=bypass)
    return env


LOOPBACK_BYPASS = ("localhost", "127.0.0.1", "::1", "127.0.0.0/8")


def no_proxy(user: str) -> str:
    """The user's ``NO_PROXY`` entries (but ``*``, which would take every call around the
    mesh), then the loopback ones not already there."""
    entries = [entry.strip() for entry in user.split(",") if entry.strip() not in ("", "*")]
    entries += [entry for entry in LOOPBACK_BYPASS if entry not in entries]
    return ",".join(entries)


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when GET ``url`` answers 200 (no proxies from the environment)."""
    try:
        with httpx.Client(trust_env=False, timeout=timeout) as client:
            return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def tcp_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class Probe:
    """A named readiness check; ``alive`` says whether waiting still makes sense."""

    name: str
    check: Callable[[], bool]
    alive: Callable[[], bool]


def wait_for(
    probes: list[Probe],
    *,
    timeout: float,
    stop: threading.Event | None = None,
    interval: float = 0.2,
) -> tuple[list[Probe], list[Probe]]:
    """Poll until every probe passes, one dies, ``stop`` is set or ``timeout`` passes.

    Returns ``(not_ready, dead)``; both empty means everything is ready.
    """
    pending = list(probes)
    deadline = time.monotonic() + timeout
    while pending:
        dead = [probe for probe in pending if not probe.alive()]
        if dead:
            return pending, dead
        pending = [probe for probe in pending if not probe.check()]
        if not pending or time.monotonic() >= deadline:
            break
        if stop is not None and stop.wait(interval):
            break
        if stop is None:
            time.sleep(interval)
    return pending, []
