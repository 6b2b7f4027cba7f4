"""Event-loop calls whose results uvloop types differently from asyncio's stubs.

Compiled modules (``gossamer.compiled``) check the declared type of every value a call
returns, even one that is thrown away. Where uvloop returns something else than typeshed
declares, the call goes through here, untyped, so the same source runs compiled and as is.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

__all__ = ["remove_reader", "server_sockets"]


def remove_reader(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Stop watching ``fd`` for reading (uvloop returns None where the stubs say bool)."""
    untyped: Any = loop
    untyped.remove_reader(fd)


def server_sockets(server: asyncio.AbstractServer) -> list[socket.socket]:
    """The listening sockets of ``server`` (uvloop gives a list where the stubs say tuple)."""
    untyped: Any = server
    return list(untyped.sockets)
