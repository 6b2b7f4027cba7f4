"""Free local ports: pick ports for apps and sidecars, and check that configured ports are free."""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["PortAllocator", "port_is_free"]

_HOST = "127.0.0.1"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def port_is_free(port: int, host: str = _HOST) -> bool:
    """True when a TCP listener could bind ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Hands out free ports for processes started next, never the same one twice.

    Ports come from outside the kernel's ephemeral range (below it, from 10000): a port the
    kernel picks for ``bind(0)`` can be given to any outgoing connection's local end before
    the process that was meant to listen on it binds it ("address already in use").
    """

    def __init__(self, reserved: set[int] | None = None) -> None:
        self._given: set[int] = set(reserved or ())
        self._rng = random.Random()
        low, high = _ephemeral_range()
        self._choices = range(10_000, low) if low - 10_000 >= 1_000 else range(high + 1, 65_536)

    def allocate(self) -> int:
        """A port that was free at the time of the call and not handed out before."""
        for _ in range(200):
            port = self._rng.choice(self._choices)
            if port not in self._given and port_is_free(port):
                self._given.add(port)
                return port
        raise OSError(f"could not find a free local port in {self._choices} in 200 attempts")

    def reserve(self, port: int) -> None:
        """Never hand out ``port`` (it is configured for something else)."""
        self._given.add(port)
