"""The byte relay: buffer reuse, backpressure, EOF and reset propagation, accounting."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import uvloop

from gossamer.proxy.observe.metrics import TcpStats
from gossamer.proxy.tcp.relay import STASH_LIMIT, Relay, RelayBuffers


class FakeTransport:
    """Records what a relay end does to its transport; keeps written views uncopied, as
    uvloop does when the socket does not take everything at once."""

    def __init__(self, queued: int = 0, copies: bool = False) -> None:
        self.writes: list[Any] = []
        self.queued = queued
        self.copies_writes = copies
        self.calls: list[str] = []
        self.eof_written = False

    def write(self, data: Any) -> None:
        self.writes.append(data)

    def written(self) -> bytes:
        return b"".join(bytes(w) for w in self.writes)

    def get_write_buffer_size(self) -> int:
        return self.queued

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.calls.append("limits")

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")

    def resume_reading(self) -> None:
        self.calls.append("resume_reading")

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def close(self) -> None:
        self.calls.append("close")

    def abort(self) -> None:
        self.calls.append("abort")


def feed(end: Any, data: bytes) -> None:
    """Do what the event loop does: read into the end's buffer, then report the count."""
    buf = end.get_buffer(-1)
    buf[: len(data)] = data
    end.buffer_updated(len(data))


def connected_relay(
    down: FakeTransport, up: FakeTransport, buffers: RelayBuffers | None = None
) -> Relay:
    relay = Relay(TcpStats(""), buffers or RelayBuffers(1024))
    relay.down.connection_made(down)
    relay.up.connection_made(up)
    return relay


class TestBuffers:
    def test_buffer_is_reused_when_the_write_went_out(self) -> None:
        """When the other side took everything, the next read uses the same memory."""
        buffers = RelayBuffers(1024)
        relay = connected_relay(FakeTransport(), FakeTransport(queued=0), buffers)
        before = buffers.plain
        feed(relay.down, b"abc")
        assert buffers.plain is before

    def test_buffer_is_replaced_while_a_write_still_holds_it(self) -> None:
        """Queued bytes keep their memory: later reads go to a new buffer."""
        buffers = RelayBuffers(1024)
        up = FakeTransport(queued=10)
        relay = connected_relay(FakeTransport(), up, buffers)
        feed(relay.down, b"first")
        feed(relay.down, b"XXXXX")
        assert up.written() == b"firstXXXXX"

    def test_tls_side_copies_so_the_buffer_stays(self) -> None:
        """A side that encrypts at once (copies_writes) never forces a new buffer."""
        buffers = RelayBuffers(1024)
        relay = connected_relay(FakeTransport(), FakeTransport(queued=10, copies=True), buffers)
        before = buffers.plain
        feed(relay.down, b"abc")
        assert buffers.plain is before


class TestFlow:
    def test_bytes_are_counted_per_direction(self) -> None:
        """Received counts the client side's bytes, sent the other side's."""
        relay = connected_relay(FakeTransport(), FakeTransport())
        feed(relay.down, b"12345")
        feed(relay.up, b"ab")
        assert relay.stats.bytes == [5, 2]

    def test_full_write_buffer_pauses_the_other_side(self) -> None:
        """pause_writing on one side stops reading on the other, resume_writing restarts it."""
        down, up = FakeTransport(), FakeTransport()
        relay = connected_relay(down, up)
        relay.up.pause_writing()
        relay.up.resume_writing()
        assert down.calls[-2:] == ["pause_reading", "resume_reading"]

    def test_bytes_before_the_other_side_connects_are_held(self) -> None:
        """What arrives before the upstream is connected is delivered in order once it is."""
        relay = Relay(TcpStats(""), RelayBuffers(1024))
        down, up = FakeTransport(), FakeTransport()
        relay.down.connection_made(down)
        feed(relay.down, b"hello ")
        feed(relay.down, b"world")
        relay.up.connection_made(up)
        assert up.written() == b"hello world"

    def test_holding_too_much_pauses_the_early_side(self) -> None:
        """Past the hold limit the early side stops reading until the other side connects."""
        relay = Relay(TcpStats(""), RelayBuffers(STASH_LIMIT))
        down = FakeTransport()
        relay.down.connection_made(down)
        feed(relay.down, b"x" * STASH_LIMIT)
        assert down.calls[-1] == "pause_reading"
        relay.up.connection_made(FakeTransport())
        assert down.calls[-1] == "resume_reading"

    def test_eof_before_the_other_side_connects_follows_the_data(self) -> None:
        """An early EOF is passed on after the held bytes."""
        relay = Relay(TcpStats(""), RelayBuffers(1024))
        down, up = FakeTransport(), FakeTransport()
        relay.down.connection_made(down)
        feed(relay.down, b"bye")
        relay.down.eof_received()
        relay.up.connection_made(up)
        assert up.written() == b"bye" and up.eof_written


async def socket_pair_relay() -> tuple[Relay, socket.socket, socket.socket, asyncio.Server]:
    """client socket ⇄ relay ⇄ server socket, all on real loopback sockets."""
    loop = asyncio.get_running_loop()
    relay = Relay(TcpStats(""), RelayBuffers(64 * 1024))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    server = await loop.create_server(lambda: relay.down, "127.0.0.1", 0)
    client = socket.create_connection(server.sockets[0].getsockname()[:2])
    client.setblocking(False)
    await loop.create_connection(lambda: relay.up, *listener.getsockname()[:2])
    backend, _ = await loop.sock_accept(listener)
    listener.close()
    return relay, client, backend, server


async def recv_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    out = b""
    while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), 5):
        out += chunk
    return out


class TestSockets:
    def test_half_close_each_way(self) -> None:
        """EOF from the client reaches the backend, which still answers, then ends too."""

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            relay, client, backend, server = await socket_pair_relay()
            await loop.sock_sendall(client, b"question")
            client.shutdown(socket.SHUT_WR)
            assert await recv_all(backend) == b"question"
            await loop.sock_sendall(backend, b"answer")
            backend.shutdown(socket.SHUT_WR)
            assert await recv_all(client) == b"answer"
            await asyncio.sleep(0.05)
            assert relay.finished and relay.stats.open == 0
            client.close()
            backend.close()
            server.close()

        uvloop.run(scenario())

    def test_reset_on_one_side_resets_the_other(self) -> None:
        """An abortive close on the backend side aborts the client side."""

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            relay, client, backend, server = await socket_pair_relay()
            backend.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            backend.close()  # RST
            try:
                data = await asyncio.wait_for(loop.sock_recv(client, 10), 5)
            except ConnectionResetError:
                data = b"reset"
            assert data == b"reset"
            await asyncio.sleep(0.05)
            assert relay.finished
            client.close()
            server.close()

        uvloop.run(scenario())

    def test_drain_deadline_closes_both_sides(self) -> None:
        """A drain timer that expires closes the client and the backend connections."""

        async def scenario() -> None:
            relay, client, backend, server = await socket_pair_relay()
            relay.start_drain(0.1, lambda r: r.close())
            assert await recv_all(client) == b""
            assert await recv_all(backend) == b""
            client.close()
            backend.close()
            server.close()

        uvloop.run(scenario())
