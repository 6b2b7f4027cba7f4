"""The one place that reads a sidecar's settings.

Settings come from ``GOSSAMER_PROXY_*`` environment variables (flags of ``gossamer proxy`` are
turned into the same names) and are parsed into frozen, grouped dataclasses. Nothing else in
the proxy reads the environment.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gossamer.proxy.loop_calls import server_sockets

__all__ = [
    "Address",
    "ControlSettings",
    "IdentitySettings",
    "ListenSettings",
    "ProxySettings",
    "SettingsError",
    "Upstream",
    "WorkloadSettings",
    "parse_upstreams",
]

PREFIX = "GOSSAMER_PROXY_"
_SERVICE_REF = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)?$")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Address:
    """A host and port to listen on or connect to."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, what: str) -> Address:
        host, sep, port = text.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()):
            raise SettingsError(f"{what}: expected HOST:PORT, got {text!r}")
        bracketed = host.startswith("[") and host.endswith("]")
        host = host[1:-1] if bracketed else host
        if ":" in host and not bracketed:
            raise SettingsError(f"{what}: write IPv6 addresses in brackets, got {text!r}")
        host = host or "127.0.0.1"
        value = int(port)
        if not 0 <= value <= 65535:
            raise SettingsError(f"{what}: port out of range in {text!r}")
        return cls(host, value)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def bound(cls, server: asyncio.AbstractServer) -> Address:
        """Where a listening server is bound (the port chosen for port 0)."""
        host, port = server_sockets(server)[0].getsockname()[:2]
        return cls(host, port)


@dataclass(frozen=True, slots=True)
class Upstream:
    """A TCP service the app reaches through a local listener of its sidecar (explicit mode)."""

    service: str  # ``name`` or ``name.namespace``
    address: Address


def parse_upstreams(text: str, *, what: str = PREFIX + "UPSTREAMS") -> tuple[Upstream, ...]:
    """``db=127.0.0.1:15432,cache=16379`` (a bare port listens on 127.0.0.1)."""
    out: list[Upstream] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, where = item.partition("=")
        name = name.strip().lower()
        if not sep or not _SERVICE_REF.match(name):
            raise SettingsError(f"{what}: expected SERVICE=[HOST:]PORT, got {item!r}")
        where = where.strip()
        address = Address.parse(where if ":" in where else f":{where}", what=what)
        if any(u.service == name for u in out):
            raise SettingsError(f"{what}: {name} is listed twice")
        out.append(Upstream(name, address))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class WorkloadSettings:
    """Who this sidecar stands beside."""

    service: str
    namespace: str = "default"
    app: Address | None = None  # the local application (None for a gateway)
    labels: Mapping[str, str] = field(default_factory=dict)
    advertise_host: str = "127.0.0.1"  # address other sidecars use to reach our inbound port
    # Where opaque TCP from the mesh goes when it is not ``app``: a service with HTTP and TCP
    # ports needs it (one address for both would tunnel raw bytes to the HTTP app).
    tcp_app: Address | None = None


@dataclass(frozen=True, slots=True)
class ListenSettings:
    """Where the sidecar listens. Port 0 means "pick a free port"."""

    outbound: Address | None = Address("127.0.0.1", 15001)
    inbound: Address | None = Address("127.0.0.1", 15006)
    admin: Address = Address("127.0.0.1", 15000)
    # A gateway sends requests whose Host is not a mesh service to this service.
    default_service: str | None = None
    workers: int = 1
    upstreams: tuple[Upstream, ...] = ()  # local TCP listeners, one per upstream service
    # Inbound connections waiting for their first bytes or their TLS handshake; beyond, new
    # ones are closed at once (a flood of silent connections cannot exhaust the sidecar).
    max_pending_handshakes: int = 1024
    # Open connections (HTTP connections accepted and TCP relays); beyond, a new one is cut.
    max_connections: int = 4096
    # The users whose processes may connect to the local ports (outbound, TCP upstreams);
    # None: any local process (docs/internals.md §11, the local host).
    local_uids: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """How to reach the control plane's sidecar stream."""

    address: Address = Address("127.0.0.1", 15012)
    ca_file: Path | None = None  # trust bundle (root certificate, PEM)
    join_token: str | None = None


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    """Where this sidecar keeps its key and certificate (a private directory, mode 0700)."""

    workdir: Path


@dataclass(frozen=True, slots=True)
class ProxySettings:
    workload: WorkloadSettings
    listen: ListenSettings
    control: ControlSettings
    identity: IdentitySettings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProxySettings:
        """Build settings from ``GOSSAMER_PROXY_*`` variables; raise ``SettingsError``.

        Checks run in the order of the fields read below, so the first problem is reported.
        """
        env = os.environ if env is None else env
        service = _required(env, "SERVICE")
        labels = _parse_labels(_get(env, "LABELS", "") or "")
        workers = _parse_workers(_get(env, "WORKERS", "1") or "1")
        workdir = _required(env, "WORKDIR")
        ca_file = _get(env, "CA_FILE")
        admin = _required_addr(env, "ADMIN_ADDR", "127.0.0.1:15000")
        control = _required_addr(env, "CONTROL_ADDR", "127.0.0.1:15012")
        return cls(
            workload=WorkloadSettings(
                service=service,
                namespace=_get(env, "NAMESPACE", "default") or "default",
                app=_addr(env, "APP_ADDR", None),
                tcp_app=_addr(env, "TCP_APP_ADDR", None),
                labels=labels,
                advertise_host=_get(env, "ADVERTISE_HOST", "127.0.0.1") or "127.0.0.1",
            ),
            listen=ListenSettings(
                outbound=_addr(env, "OUTBOUND_ADDR", "127.0.0.1:15001"),
                inbound=_addr(env, "INBOUND_ADDR", "127.0.0.1:15006"),
                admin=admin,
                default_service=_get(env, "DEFAULT_SERVICE"),
                workers=workers,
                upstreams=parse_upstreams(_get(env, "UPSTREAMS", "") or ""),
                max_pending_handshakes=_positive(env, "MAX_PENDING_HANDSHAKES", 1024),
                max_connections=_positive(env, "MAX_CONNECTIONS", 4096),
                local_uids=_uids(env, "LOCAL_UIDS"),
            ),
            control=ControlSettings(
                address=control,
                ca_file=Path(ca_file) if ca_file else None,
                join_token=_get(env, "JOIN_TOKEN"),
            ),
            identity=IdentitySettings(workdir=Path(workdir)),
        )


# Reading single variables for ``ProxySettings.from_env`` (``name`` without the prefix).


def _get(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """The variable's value; ``default`` when it is unset or empty."""
    value = env.get(PREFIX + name)
    return default if value is None or value == "" else value


def _required(env: Mapping[str, str], name: str) -> str:
    value = _get(env, name)
    if not value:
        raise SettingsError(f"{PREFIX}{name} is required")
    return value


def _addr(env: Mapping[str, str], name: str, default: str | None) -> Address | None:
    """The address the variable names; None for ``off`` (or unset without a default)."""
    text = _get(env, name, default)
    if text is None or text == "off":
        return None
    return Address.parse(text, what=PREFIX + name)


def _required_addr(env: Mapping[str, str], name: str, default: str) -> Address:
    address = _addr(env, name, default)
    if address is None:
        raise SettingsError(f"{PREFIX}{name} cannot be off")
    return address


def _parse_labels(text: str) -> dict[str, str]:
    """``k=v[,k=v]`` (``GOSSAMER_PROXY_LABELS``)."""
    labels: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"{PREFIX}LABELS: expected k=v[,k=v], got {item!r}")
        labels[key.strip()] = value.strip()
    return labels


def _parse_workers(text: str) -> int:
    """A positive integer (``GOSSAMER_PROXY_WORKERS``)."""
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise SettingsError(f"{PREFIX}WORKERS: expected a positive integer")
    return int(text)


def _uids(env: Mapping[str, str], name: str) -> frozenset[int] | None:
    """``GOSSAMER_PROXY_<name>`` as comma-separated user IDs (None when unset)."""
    raw = (_get(env, name, None) or "").strip()
    if not raw:
        return None
    parts = [part.strip() for part in raw.split(",")]
    if not all(part.isdigit() for part in parts):
        raise SettingsError(f"GOSSAMER_PROXY_{name}: expected user IDs like 1000,1001, got {raw!r}")
    return frozenset(int(part) for part in parts)


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    """``GOSSAMER_PROXY_<name>`` as a positive integer (``default`` when unset)."""
    raw = _get(env, name, None)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise SettingsError(f"GOSSAMER_PROXY_{name}: expected a positive integer, got {raw!r}")
    return int(raw)
