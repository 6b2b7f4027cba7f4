"""Which local user a loopback connection comes from, for the sidecar's local ports.

The outbound port (and the TCP upstream listeners) act with the workload's identity: whoever
can connect to them calls the mesh as the workload. On a host shared with other users,
``GOSSAMER_PROXY_LOCAL_UIDS`` names the user IDs whose processes may (the app's); a connection
from any other user is closed before a byte is read and counted as ``local-peer-refused``.
docs/internals.md §11 says what this protects and what it does not.

TCP has no ``SO_PEERCRED``: the owner of the connecting socket is asked of the kernel's
socket-diagnostics interface (``NETLINK_SOCK_DIAG``, the one ``ss`` uses), by the exact
address pair, about 20 us per connection, only when the setting is on.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from typing import Any

__all__ = ["LocalPeerError", "foreign_user", "peer_uid"]

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NO_COOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_REQUEST = struct.Struct("=BBBBI")  # inet_diag_req_v2: family, protocol, ext, pad, states
_SOCKID = struct.Struct(">HH16s16s")  # inet_diag_sockid: sport, dport, src, dst (then if, cookie)
_TAIL = struct.Struct("=III")  # sockid.if, sockid.cookie[2]
_UID_OFFSET = 4 + 48 + 12  # inet_diag_msg: family..retrans, sockid, expires/rqueue/wqueue


class LocalPeerError(OSError):
    """The kernel could not say who owns the connecting socket."""


def _packed(address: str, family: int) -> bytes:
    raw = ipaddress.ip_address(address).packed
    return raw.ljust(16, b"\0") if family == socket.AF_INET else raw


def peer_uid(conn: socket.socket) -> int:
    """The user ID owning the other end of the loopback TCP connection ``conn``."""
    family = conn.family
    local = conn.getsockname()
    peer = conn.getpeername()
    # The peer's socket: its source is the peer address, its destination our address.
    sockid = _SOCKID.pack(peer[1], local[1], _packed(peer[0], family), _packed(local[0], family))
    body = (
        _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, _ALL_STATES)
        + sockid
        + _TAIL.pack(0, _NO_COOKIE, _NO_COOKIE)
    )
    seq = int.from_bytes(os.urandom(4), "little")
    message = _HEADER.pack(_HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, seq, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.send(message + body)
        reply = nl.recv(8192)
    while len(reply) >= _HEADER.size:
        length, kind, _flags, got_seq, _pid = _HEADER.unpack_from(reply)
        payload = reply[_HEADER.size : length]
        if got_seq == seq and kind == _SOCK_DIAG_BY_FAMILY and len(payload) >= _UID_OFFSET + 4:
            return int(struct.unpack_from("=I", payload, _UID_OFFSET)[0])
        if kind in (_NLMSG_ERROR, _NLMSG_DONE):
            break
        reply = reply[(length + 3) & ~3 :]
    raise LocalPeerError(f"no owner found for the connection from {peer[0]}:{peer[1]}")


def foreign_user(allowed: frozenset[int], transport: Any) -> str:
    """Why the loopback connection of ``transport`` is refused (its owner is not one of
    ``allowed``, or unknown: refused too); empty when it may go on."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return "no socket"
    try:
        uid = peer_uid(sock)
    except (OSError, ValueError) as exc:
        return f"owner unknown: {exc}"
    return "" if uid in allowed else f"user {uid}"
