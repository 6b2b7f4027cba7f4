"""``python -m bench.tls_transport``: uvloop's SSL transport against the sidecar's own
memory-BIO TLS stream (``proxy/tcp/tls_stream.py``), for issue 10 item 7.

The sidecar speaks mTLS through two transports: HTTP/1.1 and HTTP/2 through uvloop's
``SSLProtocol`` (``loop.create_connection(ssl=...)``), the TCP relay through ``TlsStream``, its
own memory-BIO stream with buffers shared by every connection. Before choosing one for every
protocol, this measures them on the same work, in one process, alternating rounds:

- CPU per round trip: a client sends a message over mTLS (TLS 1.3, the mesh's ECDSA
  certificates) and the server echoes it back; ``time.process_time`` over N round trips
  counts both ends' work (encryption, the transport's buffering and copies, the event loop);
- memory per connection: the growth of the process's RSS while M connections (both ends)
  are open and have each carried one message.

Results are printed (a table of medians per message size) and, with ``--write``, recorded in
bench/RESULTS.md between markers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ssl
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvloop

from gossamer.control.ca import CertificateAuthority
from gossamer.identity.spiffe import SpiffeId
from gossamer.proxy.tcp.relay import RelayBuffers
from gossamer.proxy.tcp.tls_stream import TlsStream

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- tls-transport:begin -->"
END = "<!-- tls-transport:end -->"


def _contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts as sidecars have them: mTLS, certificates from one CA."""
    ca = CertificateAuthority.ephemeral()
    root = tmp / "root.crt"
    root.write_bytes(ca.root_pem)
    contexts = []
    for name, purpose in (("server", ssl.PROTOCOL_TLS_SERVER), ("client", ssl.PROTOCOL_TLS_CLIENT)):
        cert, key = ca.issue_keypair(SpiffeId(ca.trust_domain, "default", name),
                                     timedelta(hours=1), ["localhost"], ["127.0.0.1"])
        (tmp / f"{name}.crt").write_bytes(cert)
        (tmp / f"{name}.key").write_bytes(key)
        context = ssl.SSLContext(purpose)
        context.load_cert_chain(tmp / f"{name}.crt", tmp / f"{name}.key")
        context.load_verify_locations(root)
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = False
        contexts.append(context)
    return contexts[0], contexts[1]


# --------------------------------------------------------------------------- uvloop SSL


class _SslEcho(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _Echoes:
    """A client's side of a round trip: send a message, wait until as many bytes came back."""

    def __init__(self) -> None:
        self.waiter: asyncio.Future[None] | None = None
        self.expect = 0
        self.transport: Any = None

    def got(self, nbytes: int) -> None:
        self.expect -= nbytes
        if self.expect <= 0 and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def round_trip(self, message: bytes) -> None:
        self.expect = len(message)
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(message)
        await self.waiter


class _SslClient(asyncio.Protocol, _Echoes):
    def __init__(self) -> None:
        _Echoes.__init__(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got(len(data))


async def _ssl_pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
                    port: int) -> tuple[_SslClient, Any]:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(_SslClient, "127.0.0.1", port, ssl=client_ctx,
                                             server_hostname="localhost")
    return client, client.transport


# --------------------------------------------------------------------------- TlsStream


class _BioEcho(asyncio.BufferedProtocol):
    """The app end of a server ``TlsStream``: echoes what it gets."""

    def __init__(self) -> None:
        self.buffer = memoryview(bytearray(65536))

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(bytes(self.buffer[:nbytes]))

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class _BioClient(_BioEcho, _Echoes):
    def __init__(self) -> None:
        _BioEcho.__init__(self)
        _Echoes.__init__(self)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def buffer_updated(self, nbytes: int) -> None:
        self.got(nbytes)


async def _bio_pair(client_ctx: ssl.SSLContext, port: int,
                    buffers: RelayBuffers) -> tuple[_BioClient, Any]:
    loop = asyncio.get_running_loop()
    stream = TlsStream(client_ctx, buffers, server_side=False, server_hostname="localhost")
    await loop.create_connection(lambda: stream, "127.0.0.1", port)
    await stream.ready
    client = _BioClient()
    stream.attach(client)
    return client, stream


# --------------------------------------------------------------------------- the runs


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _measure(make: Callable[[], Awaitable[tuple[Any, Any]]], sizes: list[int],
                   trips: int, conns: int) -> dict[str, float]:
    client, transport = await make()
    out: dict[str, float] = {}
    for size in sizes:
        message = b"x" * size
        for _ in range(50):
            await client.round_trip(message)
        started = time.process_time()
        for _ in range(trips):
            await client.round_trip(message)
        out[f"us/{size}"] = (time.process_time() - started) / trips * 1e6
    transport.close()
    gc.collect()
    await asyncio.sleep(0.05)
    before = _rss_kib()
    opened = [await make() for _ in range(conns)]
    for each, _ in opened:
        await each.round_trip(b"y" * 16384)
    out["KiB/conn"] = (_rss_kib() - before) / conns
    for _, each in opened:
        each.close()
    await asyncio.sleep(0.05)
    return out


async def _run(rounds: int, trips: int, conns: int, sizes: list[int]) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        server_ctx, client_ctx = _contexts(Path(tmp))
        loop = asyncio.get_running_loop()
        ssl_server = await loop.create_server(_SslEcho, "127.0.0.1", 0, ssl=server_ctx)
        ssl_port = ssl_server.sockets[0].getsockname()[1]
        buffers = RelayBuffers()

        def bio_server() -> TlsStream:
            stream = TlsStream(server_ctx, buffers, server_side=True)
            stream.ready.add_done_callback(lambda _: stream.attach(_BioEcho()))
            return stream

        bio = await loop.create_server(bio_server, "127.0.0.1", 0)
        bio_port = bio.sockets[0].getsockname()[1]
        results: dict[str, list[float]] = {}
        for _ in range(rounds):  # alternating, so drift hits both alike
            for name, make in (
                ("uvloop SSL", lambda: _ssl_pair(server_ctx, client_ctx, ssl_port)),
                ("TlsStream", lambda: _bio_pair(client_ctx, bio_port, buffers)),
            ):
                for key, value in (await _measure(make, sizes, trips, conns)).items():
                    results.setdefault(f"{name} {key}", []).append(value)
        ssl_server.close()
        bio.close()
        return results


def _table(results: dict[str, list[float]], sizes: list[int]) -> str:
    lines = ["| transport | " + " | ".join(f"CPU us per round trip, {s} B" for s in sizes)
             + " | RSS KiB per connection (both ends) |",
             "|---|" + "---|" * (len(sizes) + 1)]
    for name in ("uvloop SSL", "TlsStream"):
        cells = [f"{statistics.median(results[f'{name} us/{s}']):.1f}" for s in sizes]
        cells.append(f"{statistics.median(results[f'{name} KiB/conn']):.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tls_transport")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--trips", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args(argv)
    sizes = [256, 16384]
    results = uvloop.run(_run(args.rounds, args.trips, args.connections, sizes))
    table = _table(results, sizes)
    print(table)
    if args.write:
        path = ROOT / "bench" / "RESULTS.md"
        text = path.read_text()
        block = f"{BEGIN}\n{table}\n{END}"
        if BEGIN in text:
            head, _, rest = text.partition(BEGIN)
            text = head + block + rest.partition(END)[2]
        else:
            text += f"\n\n## TLS transports (issue 10, item 7)\n\n{block}\n"
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
