"""Free local ports: pick ports for apps and sidecars, and check that configured ports are free."""

from __future__ import annotations

import socket

__all__ = ["PortAllocator", "port_is_free"]

_HOST = "127.0.0.1"


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
    """Hands out free ports, never the same one twice (the kernel may repeat port 0 picks)."""

    def __init__(self, reserved: set[int] | None = None) -> None:
        self._given: set[int] = set(reserved or ())

    def allocate(self) -> int:
        """A port that was free at the time of the call and not handed out before."""
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((_HOST, 0))
                port = int(sock.getsockname()[1])
            if port not in self._given:
                self._given.add(port)
                return port
        raise OSError("could not find a free local port in 100 attempts")

    def reserve(self, port: int) -> None:
        """Never hand out ``port`` (it is configured for something else)."""
        self._given.add(port)
