"""Simulated sidecars: many real TLS streams to the control plane from one process.

``python -m bench.fleet`` is one worker. It issues a real workload certificate per service
from the mesh CA (``CertificateAuthority.issue_keypair`` on the control plane's data dir: the
same CA and the same certificates a join would give, minus the join round trip), opens one
mTLS stream per simulated proxy, says ``hello`` as workload ``<prefix>-<i % services>`` with a
(never contacted) inbound port so each proxy is an endpoint, ACKs every snapshot at once and
answers pings. It reports on stdout, one JSON object per line:

- ``{"e": "ready", "ok": N, "failed": M}`` once every stream got its first snapshot (or failed);
- ``{"e": "snap", "i": INDEX, "v": VERSION, "t": MONOTONIC_NS}`` per snapshot, stamped when its
  line arrived (CLOCK_MONOTONIC is shared by every process of the machine);
- ``{"e": "error", "i": INDEX, "msg": ...}`` when a stream is refused or breaks.

It exits when its stdin says ``quit`` or closes, so it cannot outlive the suite.
:class:`Fleet` runs several workers from the suite and gathers their reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import queue
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = ["Fleet", "main"]

MAX_LINE = 16 * 1024 * 1024
CONNECT_TIMEOUT = 60.0
CONNECT_ATTEMPTS = 3
FAKE_PORT_BASE = 20000


# ---------------------------------------------------------------- worker (its own process)


class _Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: list[str] = []
        self.ok = 0
        self.failed = 0
        self.writers: list[asyncio.StreamWriter] = []

    def emit(self, event: dict[str, Any]) -> None:
        self.out.append(json.dumps(event, separators=(",", ":")))

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            self.flush()

    def flush(self) -> None:
        if self.out:
            sys.stdout.write("\n".join(self.out) + "\n")
            sys.stdout.flush()
            self.out.clear()

    def contexts(self, services: set[str], tmp: Path) -> dict[str, ssl.SSLContext]:
        from gossamer.control.ca import CertificateAuthority
        from gossamer.identity.spiffe import SpiffeId

        ca = CertificateAuthority.load_or_create(Path(self.args.data_dir))
        root = Path(self.args.data_dir) / "ca" / "root.crt"
        out: dict[str, ssl.SSLContext] = {}
        for service in sorted(services):
            cert, key = ca.issue_keypair(
                SpiffeId(ca.trust_domain, "default", service), timedelta(hours=12)
            )
            cert_path, key_path = tmp / f"{service}.crt", tmp / f"{service}.key"
            cert_path.write_bytes(cert)
            key_path.write_bytes(key)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(cafile=root)
            context.load_cert_chain(cert_path, key_path)
            out[service] = context
        return out

    async def proxy(
        self, index: int, service: str, context: ssl.SSLContext, gate: asyncio.Semaphore
    ) -> None:
        """One simulated sidecar: connect (retrying a slow or refused first attempt), then
        read until cancelled."""
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            first = asyncio.get_running_loop().create_future()
            writer: asyncio.StreamWriter | None = None
            reading: asyncio.Task[None] | None = None
            try:
                async with gate:
                    reader, opened = await asyncio.wait_for(
                        self.open(index, service, context), CONNECT_TIMEOUT
                    )
                    writer = opened
                    reading = asyncio.create_task(self.read(index, reader, opened, first))
                    await asyncio.wait_for(asyncio.shield(first), CONNECT_TIMEOUT)
            except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError) as exc:
                self.emit({"e": "error", "i": index, "msg": f"{type(exc).__name__}: {exc}"})
                if reading is not None:
                    reading.cancel()
                if writer is not None:
                    writer.close()
                if attempt == CONNECT_ATTEMPTS:
                    self.failed += 1
                    return
                continue
            assert writer is not None and reading is not None
            self.ok += 1
            self.writers.append(writer)
            await reading
            return

    async def open(
        self, index: int, service: str, context: ssl.SSLContext
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        args = self.args
        host, _, port = args.stream.rpartition(":")
        reader, writer = await asyncio.open_connection(
            host, int(port), ssl=context, server_hostname="localhost", limit=MAX_LINE
        )
        hello = {
            "type": "hello",
            "proxy_id": f"{args.prefix}-proxy-{index}",
            "workload": {
                "service": service,
                "namespace": "default",
                "address": "127.0.0.1",
                "inbound_port": FAKE_PORT_BASE + index % 40000,
                "admin_port": None,
                "labels": {"version": "v1"},
            },
            "subscriptions": args.subscribe.split(",") if args.subscribe else [],
            "cert_expiry": int(time.time()) + 43200,
        }
        writer.write(json.dumps(hello).encode() + b"\n")
        return reader, writer

    async def read(
        self,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: asyncio.Future[None],
    ) -> None:
        try:
            await self._read_loop(index, reader, writer, first)
        except (OSError, ssl.SSLError, ValueError, asyncio.LimitOverrunError) as exc:
            self.emit({"e": "error", "i": index, "msg": f"{type(exc).__name__}: {exc}"})
            if not first.done():
                first.set_exception(ConnectionError(str(exc)))

    async def _read_loop(
        self,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: asyncio.Future[None],
    ) -> None:
        while True:
            line = await reader.readline()
            stamp = time.monotonic_ns()
            if not line:
                self.emit({"e": "error", "i": index, "msg": "stream closed"})
                if not first.done():
                    first.set_exception(ConnectionError("closed before the first snapshot"))
                return
            message = json.loads(line)
            kind = message.get("type")
            if kind == "snapshot":
                version = message["version"]
                writer.write(b'{"type":"ack","version":%d}\n' % version)
                self.emit({"e": "snap", "i": index, "v": version, "t": stamp})
                if not first.done():
                    first.set_result(None)
            elif kind == "ping":
                writer.write(b'{"type":"pong"}\n')
            elif kind == "error":
                self.emit({"e": "error", "i": index, "msg": str(message)})
                if not first.done():
                    first.set_exception(ConnectionError(str(message)))

    async def run(self) -> None:
        args = self.args
        indexes = range(args.first, args.first + args.count)
        service_of = {i: f"{args.prefix}-{i % args.services}" for i in indexes}
        flusher = asyncio.create_task(self.flush_forever())
        with tempfile.TemporaryDirectory(prefix="gossamer-fleet-") as tmp:
            contexts = self.contexts(set(service_of.values()), Path(tmp))
        gate = asyncio.Semaphore(args.concurrency)
        tasks = [
            asyncio.create_task(self.proxy(i, service_of[i], contexts[service_of[i]], gate))
            for i in indexes
        ]
        while self.ok + self.failed < len(tasks):
            await asyncio.sleep(0.02)
        self.emit({"e": "ready", "ok": self.ok, "failed": self.failed})
        await asyncio.get_running_loop().run_in_executor(None, _wait_for_quit)
        for task in tasks:
            task.cancel()
        for writer in self.writers:
            with contextlib.suppress(Exception):
                writer.close()
        flusher.cancel()
        self.flush()


def _wait_for_quit() -> None:
    for line in sys.stdin:
        if line.strip() == "quit":
            return


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet")
    parser.add_argument("--stream", required=True, help="control plane stream HOST:PORT")
    parser.add_argument("--data-dir", required=True, help="control plane data dir (its CA)")
    parser.add_argument("--prefix", default="sim")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--services", type=int, required=True, help="proxy i is <prefix>-<i%%N>")
    parser.add_argument("--subscribe", default="", help="comma-separated services")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(_Worker(args).run())
    return 0


# ---------------------------------------------------------------- the suite's side


@dataclass
class Fleet:
    """Worker processes of simulated sidecars and what they reported."""

    procs: list[subprocess.Popen[bytes]]
    events: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    versions: dict[int, int] = field(default_factory=dict)  # latest version per proxy
    history: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # (version, ns)
    errors: list[str] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    ready_workers: int = 0
    last_snapshot_ns: int = 0

    @classmethod
    def start(
        cls,
        stream: str,
        data_dir: Path,
        *,
        first: int,
        count: int,
        services: int,
        subscribe: Sequence[str] = (),
        workers: int = 1,
        log_dir: Path,
        prefix: str = "sim",
    ) -> Fleet:
        """Start ``workers`` processes sharing proxies ``first .. first+count-1``."""
        procs: list[subprocess.Popen[bytes]] = []
        share, extra = divmod(count, workers)
        start = first
        fleet = cls(procs)
        for w in range(workers):
            n = share + (1 if w < extra else 0)
            if n == 0:
                continue
            args = [
                sys.executable,
                "-m",
                "bench.fleet",
                "--stream",
                stream,
                "--data-dir",
                str(data_dir),
                "--prefix",
                prefix,
                "--first",
                str(start),
                "--count",
                str(n),
                "--services",
                str(services),
                "--subscribe",
                ",".join(subscribe),
            ]
            stderr = open(log_dir / f"fleet-{prefix}-{start}.log", "wb")  # noqa: SIM115
            proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=Path(__file__).resolve().parent.parent,
            )
            stderr.close()
            procs.append(proc)
            threading.Thread(target=fleet._reader, args=(proc,), daemon=True).start()
            start += n
        return fleet

    def _reader(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))
        self.events.put({"e": "exit", "pid": proc.pid})

    def _drain(self, timeout: float) -> bool:
        """Handle the events that arrive within ``timeout``; False if none did."""
        try:
            event = self.events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return False
        while True:
            kind = event.get("e")
            if kind == "snap":
                index = int(event["i"])
                version = int(event["v"])
                self.versions[index] = max(self.versions.get(index, 0), version)
                self.history.setdefault(index, []).append((version, int(event["t"])))
                self.last_snapshot_ns = time.monotonic_ns()
            elif kind == "ready":
                self.ready_workers += 1
                self.ok += int(event["ok"])
                self.failed += int(event["failed"])
            elif kind == "error":
                self.errors.append(str(event.get("msg")))
            elif kind == "exit":
                self.errors.append(f"fleet worker {event['pid']} exited")
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return True

    def wait_ready(self, timeout: float) -> bool:
        """Until every worker connected all its proxies (each got a first snapshot, or gave up
        after its attempts); False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while self.ready_workers < len(self.procs):
            if time.monotonic() > deadline:
                return False
            self._drain(0.1)
        return True

    def wait_quiet(self, quiet: float, timeout: float) -> None:
        """Until no snapshot arrived for ``quiet`` seconds (pushes after joins have settled)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._drain(0.05)
            if time.monotonic_ns() - self.last_snapshot_ns > quiet * 1e9:
                return

    def wait_newer(self, baseline: dict[int, int], timeout: float) -> dict[int, int]:
        """Arrival times (ns) of the first snapshot newer than ``baseline`` for each proxy."""
        deadline = time.monotonic() + timeout
        arrived: dict[int, int] = {}
        while len(arrived) < len(baseline) and time.monotonic() < deadline:
            self._drain(0.05)
            for index, version in baseline.items():
                if index not in arrived and self.versions.get(index, 0) > version:
                    arrived[index] = min(t for v, t in self.history[index] if v > version)
        return arrived

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.write(b"quit\n")
                    proc.stdin.flush()
                    proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
