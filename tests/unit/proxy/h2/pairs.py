"""In-memory HTTP/2 client/server session pairs for tests (no sockets)."""

from __future__ import annotations

from gossamer.protocol.h2 import binding
from gossamer.protocol.h2.session import Event, H2Session

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"catalog"),
    (b":path", b"/items"),
]
GET = [(b":method", b"GET"), *REQUEST[1:]]


def pair(window: int = 65535) -> tuple[H2Session, H2Session]:
    """A client and a server session whose stream windows are ``window`` bytes."""
    client = H2Session(
        client=True,
        settings=[
            (binding.SETTINGS_ENABLE_PUSH, 0),
            (binding.SETTINGS_INITIAL_WINDOW_SIZE, window),
        ],
    )
    server = H2Session(
        client=False, settings=[(binding.SETTINGS_INITIAL_WINDOW_SIZE, window)]
    )
    return client, server


def pump(src: H2Session, dst: H2Session) -> list[Event]:
    """Move what ``src`` wants to send into ``dst``; return ``dst``'s events (those ``src``
    completed by sending stay for its ``take_events``)."""
    return dst.receive(src.data_to_send())


def settle(client: H2Session, server: H2Session) -> tuple[list[Event], list[Event]]:
    """Pump both ways until quiet; return (client events, server events)."""
    client_events: list[Event] = []
    server_events: list[Event] = []
    for _ in range(20):
        a = client.data_to_send()
        client_events += client.take_events()
        if a:
            server_events += server.receive(a)
        b = server.data_to_send()
        server_events += server.take_events()
        if b:
            client_events += client.receive(b)
        if not a and not b:
            break
    return client_events, server_events


def of_kind(events: list[Event], kind: int) -> list[Event]:
    return [e for e in events if e[0] == kind]
