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
        """Build settings from ``GOSSAMER_PROXY_*`` variables; raise ``SettingsError``."""
        env = os.environ if env is None else env

        def get(name: str, default: str | None = None) -> str | None:
            value = env.get(PREFIX + name)
            return default if value is None or value == "" else value

        def addr(name: str, default: str | None) -> Address | None:
            text = get(name, default)
            if text is None or text == "off":
                return None
            return Address.parse(text, what=PREFIX + name)

        service = get("SERVICE")
        if not service:
            raise SettingsError(f"{PREFIX}SERVICE is required")
        labels: dict[str, str] = {}
        for item in (get("LABELS", "") or "").split(","):
            if not item.strip():
                continue
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise SettingsError(f"{PREFIX}LABELS: expected k=v[,k=v], got {item!r}")
            labels[key.strip()] = value.strip()
        workers_text = get("WORKERS", "1") or "1"
        if not (workers_text.isascii() and workers_text.isdigit()) or int(workers_text) < 1:
            raise SettingsError(f"{PREFIX}WORKERS: expected a positive integer")
        workdir = get("WORKDIR")
        if not workdir:
            raise SettingsError(f"{PREFIX}WORKDIR is required")
        ca_file = get("CA_FILE")
        admin = addr("ADMIN_ADDR", "127.0.0.1:15000")
        if admin is None:
            raise SettingsError(f"{PREFIX}ADMIN_ADDR cannot be off")
        control = addr("CONTROL_ADDR", "127.0.0.1:15012")
        if control is None:
            raise SettingsError(f"{PREFIX}CONTROL_ADDR cannot be off")
        return cls(
            workload=WorkloadSettings(
                service=service,
                namespace=get("NAMESPACE", "default") or "default",
                app=addr("APP_ADDR", None),
                labels=labels,
                advertise_host=get("ADVERTISE_HOST", "127.0.0.1") or "127.0.0.1",
            ),
            listen=ListenSettings(
                outbound=addr("OUTBOUND_ADDR", "127.0.0.1:15001"),
                inbound=addr("INBOUND_ADDR", "127.0.0.1:15006"),
                admin=admin,
                default_service=get("DEFAULT_SERVICE"),
                workers=int(workers_text),
                upstreams=parse_upstreams(get("UPSTREAMS", "") or ""),
            ),
            control=ControlSettings(
                address=control,
                ca_file=Path(ca_file) if ca_file else None,
                join_token=get("JOIN_TOKEN"),
            ),
            identity=IdentitySettings(workdir=Path(workdir)),
        )
