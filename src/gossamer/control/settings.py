"""The control plane's settings, read once from flags/environment into a frozen value."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from gossamer.identity.spiffe import DEFAULT_TRUST_DOMAIN

__all__ = [
    "DEFAULT_CERT_LIFETIME",
    "ControlSettings",
    "HostPort",
    "default_data_dir",
    "is_loopback",
]

DEFAULT_CERT_LIFETIME = timedelta(hours=24)


def default_data_dir() -> Path:
    """``$GOSSAMER_DATA_DIR`` or ``~/.gossamer``."""
    env = os.environ.get("GOSSAMER_DATA_DIR")
    return Path(env) if env else Path.home() / ".gossamer"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class HostPort:
    """A listen address."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """Parse ``HOST:PORT`` (``[::1]:PORT`` for IPv6); raise ``ValueError`` otherwise."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        return cls(host.strip("[]") or "127.0.0.1", int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """Everything the control plane process is configured with."""

    data_dir: Path
    api_addr: HostPort = HostPort("127.0.0.1", 15010)
    stream_addr: HostPort = HostPort("127.0.0.1", 15012)
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    endpoint_grace: float = 3.0
    cert_lifetime: timedelta = DEFAULT_CERT_LIFETIME
    log_level: str = "info"
    peer_timeout: float = 15.0
    ping_interval: float = 5.0
    restore_grace: float = 30.0  # a proxy restored from the store has this long to reconnect
    api_tls: bool = False  # serve the config API over TLS (required off loopback)
    tls_sans: tuple[str, ...] = ()  # extra names/addresses in the serving certificate
    # The operator's CA (--ca-cert, --ca-key, --ca-bundle): imported into the data dir at start.
    ca_files: tuple[Path, Path, Path] | None = None
