"""A sidecar in several processes (``GOSSAMER_PROXY_WORKERS=N``, N > 1): the supervisor.

For gateways and busy sidecars one Python process is one core. With N workers the process
started as the sidecar becomes a supervisor that owns what must exist once per sidecar: the
control-plane client (one stream, one registration, one identity and its renewals), the admin
server, and N worker processes (``proxy/workers/child.py``) that carry the traffic.

- Ports (``proxy/workers/ports.py``): the supervisor resolves every listening address (port 0
  included) to a concrete port and holds it with a bound, non-listening ``SO_REUSEPORT``
  socket; each worker binds the
  outbound, inbound and TCP upstream listeners on those ports with ``SO_REUSEPORT``, so the
  kernel spreads new connections over the workers, and the port stays ours while a worker
  restarts. (A bound socket that never listens receives no connections.)
- Config: the supervisor compiles every snapshot first (``ProxyState.apply_snapshot``: the
  same compile), so a bad snapshot is NACKed once and never reaches a worker; a good one is
  ACKed and forwarded to every worker, which applies it the same way.
- Certificates: the supervisor's ``Credentials`` joins and renews; after each install it tells
  every worker, which reloads its contexts from the workdir in place.
- Discovery: a worker that meets an unknown host asks the supervisor, which subscribes on the
  stream; the answering snapshot reaches every worker.
- ``/metrics`` asks every worker for its exposition over its metrics channel (bounded wait) and
  adds them up (``proxy/workers/metrics_merge.py``); ``/ready``
  needs a certificate and config in the
  supervisor and every worker running, on the current config version and certificate.
- A worker that exits is restarted with backoff (0.2 s doubling to 10 s; reset after 10 s up).
  SIGTERM/SIGINT: every worker drains like a one-process sidecar, the supervisor waits for
  them (bounded), then closes the stream and the admin server and returns.

Workers are fresh interpreters (``python -m gossamer.proxy.workers.child``) with their channel fds
passed by ``pass_fds``, not ``os.fork`` children: nothing of the supervisor's running uvloop
loop (libuv handles, signal wakeup fd, child watchers) leaks into a worker, a restart from a
running loop is the same path as the first start, and a worker imports only the data path.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import gossamer
from gossamer.identity.credentials import Credentials
from gossamer.proxy.process.admin import AdminServer
from gossamer.proxy.process.audit_shipper import start_shipping
from gossamer.proxy.process.control_client import ControlClient
from gossamer.proxy.process.main import DRAIN_SECONDS
from gossamer.proxy.process.settings import ProxySettings
from gossamer.proxy.state import ProxyState
from gossamer.proxy.tasks import cancel_and_wait, spawn
from gossamer.proxy.workers.channel import BlockingChannel, encode, read_frame
from gossamer.proxy.workers.metrics_merge import (
    Exposition,
    merge,
    parse_exposition,
    render_exposition,
)
from gossamer.proxy.workers.ports import reserve_all

__all__ = ["Supervisor", "supervise"]

log = logging.getLogger("gossamer.proxy.workers.supervisor")

RESTART_FIRST = 0.2
RESTART_MAX = 10.0
STABLE_SECONDS = 10.0  # a worker up this long restarts with the first delay again
SCRAPE_TIMEOUT = 1.0
SETTLE_TIMEOUT = 5.0  # how long a renewal or new bundle waits for the workers to reload it
STOP_GRACE = 3.0  # after the workers' own drain bound (DRAIN_SECONDS), kill what is left


class _SupervisedCredentials(Credentials):
    """``Credentials`` that tells the supervisor after every install and new bundle (the
    workers reload both from the workdir)."""

    on_install: Callable[[], None] | None = None
    workers_settled: Callable[[], Awaitable[None]] | None = None

    def install(
        self, cert_pem: bytes, key_path: Path, ca_pem: bytes, *, expires: float | None = None
    ) -> None:
        super().install(cert_pem, key_path, ca_pem, expires=expires)
        if self.on_install is not None:
            self.on_install()

    def adopt_bundle(self, ca_pem: bytes) -> None:
        super().adopt_bundle(ca_pem)
        if self.on_install is not None:
            self.on_install()

    async def settled(self) -> None:
        if self.workers_settled is not None:
            await self.workers_settled()


class _Worker:
    """The supervisor's view of one worker slot (the process in it changes on restart)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.metrics: BlockingChannel | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.started = False
        self.applied: int | None = None
        self.error: str | None = None
        self.cert_generation: int | None = None
        self.cert_ok = False
        self.restarts = 0
        self.last_scrape: Exposition = {}

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def send(self, frame: bytes) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(frame)

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": self.pid,
            "running": self.started,
            "applied_version": self.applied,
            "error": self.error,
            "certificate_loaded": self.cert_ok,
            "restarts": self.restarts,
        }


class Supervisor:
    """Owns the worker processes; the control client's snapshot handler and the admin state."""

    def __init__(
        self, settings: ProxySettings, credentials: _SupervisedCredentials, log_level: str
    ) -> None:
        self.settings = settings  # with concrete ports
        self.credentials = credentials
        self.state = ProxyState(settings)  # compiles snapshots; carries no traffic
        self.state.cert_ready = lambda: credentials.ready
        self.client: ControlClient | None = None
        self.version: int | None = None
        self.cert_generation = 0
        self._log_level = log_level
        self._workers = [_Worker(i) for i in range(settings.listen.workers)]
        self._snapshot: tuple[int, dict[str, Any]] | None = None  # the newest that compiled
        self._requested: set[str] = set()
        self._retired: Exposition = {}
        self._scrape_ids = itertools.count(1)
        self._stopping = False
        self._stop = asyncio.Event()
        self._runners: list[asyncio.Task[None]] = []
        credentials.on_install = self._certificate_changed
        credentials.workers_settled = self._workers_reloaded

    # === lifecycle ===

    def start(self) -> None:
        self._runners = [
            spawn(self._keep_running(w), name=f"worker {w.index}") for w in self._workers
        ]

    async def stop(self) -> None:
        """Drain every worker, wait for them (bounded), kill what is left."""
        self._stopping = True
        self._stop.set()
        self.state.draining = True
        drain = encode({"type": "drain"})
        for worker in self._workers:
            worker.send(drain)
        if not self._runners:
            return
        _, pending = await asyncio.wait(self._runners, timeout=DRAIN_SECONDS + STOP_GRACE)
        for worker in self._workers:
            if worker.process is not None and worker.process.returncode is None:
                log.warning("worker %d (pid %d) did not drain in time; killing it",
                            worker.index, worker.process.pid)  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
        if pending:
            await asyncio.wait(pending, timeout=STOP_GRACE)
        await cancel_and_wait(self._runners)

    async def _keep_running(self, worker: _Worker) -> None:
        delay = RESTART_FIRST
        while not self._stopping:
            started = time.monotonic()
            status: int | str
            try:
                process = await self._spawn(worker)
            except OSError as exc:
                status = f"failed to start ({exc})"
            else:
                code = await process.wait()
                self._detach(worker)
                status = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            if self._stopping:
                return
            if time.monotonic() - started > STABLE_SECONDS:
                delay = RESTART_FIRST
            log.warning("worker %d %s; restarting it in %.1f s", worker.index, status, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, RESTART_MAX)
            if not self._stopping:
                worker.restarts += 1

    async def _spawn(self, worker: _Worker) -> asyncio.subprocess.Process:
        control, control_child = socket.socketpair()
        metrics, metrics_child = socket.socketpair()
        env = dict(os.environ)
        # Where the gossamer package is (this module may be a compiled one elsewhere).
        src_root = str(Path(gossamer.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH")) if p)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gossamer.proxy.workers.child", str(worker.index),
                str(control_child.fileno()), str(metrics_child.fileno()), self._log_level,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(control_child.fileno(), metrics_child.fileno()),
                env=env,
            )  # fmt: skip
        except OSError:
            control.close()
            metrics.close()
            raise
        finally:
            control_child.close()
            metrics_child.close()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=control)
        except OSError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            control.close()
            metrics.close()
            raise
        # From here to the end nothing awaits: the newest snapshot cannot slip past this worker.
        worker.process = process
        worker.writer = writer
        worker.metrics = BlockingChannel(metrics)
        settings = replace(self.settings, control=replace(self.settings.control, join_token=None))
        blob = base64.b64encode(pickle.dumps(settings)).decode()
        init: dict[str, Any] = {"type": "init", "settings": blob,
                                "cert_generation": self.cert_generation}  # fmt: skip
        if self._snapshot is not None:
            # In init, not after it: the worker installs it before it listens, so no
            # connection reaches a worker that has no config (a restarted one included).
            init["version"], init["snapshot"] = self._snapshot
        worker.send(encode(init))
        name = f"worker {worker.index} channel"
        worker.reader_task = spawn(self._read(worker, reader), name=name)
        log.info("worker %d started (pid %d)", worker.index, process.pid)
        return process

    def _detach(self, worker: _Worker) -> None:
        if worker.last_scrape:
            self._retired = merge([self._retired, worker.last_scrape], monotonic_only=True)
        worker.last_scrape = {}
        if worker.writer is not None:
            worker.writer.close()
        if worker.metrics is not None:
            worker.metrics.close()
        if worker.reader_task is not None:
            worker.reader_task.cancel()
        worker.process = worker.writer = worker.metrics = worker.reader_task = None
        worker.started = False
        worker.applied = worker.cert_generation = None
        worker.error = None
        worker.cert_ok = False

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        while True:
            message = await read_frame(reader)
            if message is None:
                return
            kind = message["type"]
            if kind == "started":
                worker.started = True
                worker.cert_generation = message.get("cert_generation")
                worker.cert_ok = bool(message.get("cert_ok"))
            elif kind == "applied":
                error = message.get("error")
                worker.error = str(error) if error else None
                if error:
                    log.error("worker %d refused config version %s: %s",
                              worker.index, message.get("version"), error)  # fmt: skip
                else:
                    worker.applied = message.get("version")
            elif kind == "cert":
                worker.cert_generation = message.get("generation")
                worker.cert_ok = bool(message.get("ok"))
            elif kind == "subscribe":
                names = [str(n) for n in message.get("services") or () if n]
                self._requested.update(names)
                if self.client is not None and names:
                    self.client.subscribe(names)
            elif kind == "jwks-refresh":
                issuer = message.get("issuer")
                if self.client is not None and isinstance(issuer, str) and issuer:
                    self.client.request_jwks(issuer)
            elif kind == "tap-event" and self.client is not None:
                self.client.send(message)  # a worker's tap events, to the control plane

    def _broadcast(self, frame: bytes) -> None:
        for worker in self._workers:
            worker.send(frame)

    def broadcast(self, message: dict[str, Any]) -> None:
        """Pass a control-plane message on to every worker (a tap's start and stop)."""
        self._broadcast(encode(message))

    def _certificate_changed(self) -> None:
        self.cert_generation += 1
        self._broadcast(encode({"type": "cert", "generation": self.cert_generation}))

    async def _workers_reloaded(self) -> None:
        """Until every running worker has reloaded the workdir's certificate and bundle
        (bounded by ``SETTLE_TIMEOUT``; a worker that restarts loads them as it starts)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline and any(
            w.started and w.cert_generation != self.cert_generation for w in self._workers
        ):
            await asyncio.sleep(0.01)

    # === SnapshotHandler (the control client's) ===

    def apply_snapshot(self, version: int, snapshot: dict[str, Any]) -> None:
        """Compile here (raise to NACK); forward what compiled to every worker."""
        self.state.apply_snapshot(version, snapshot)
        self.version = version
        self._snapshot = (version, snapshot)
        self._broadcast(encode({"type": "snapshot", "version": version, "snapshot": snapshot}))

    def subscriptions(self) -> list[str]:
        namespace = self.settings.workload.namespace
        upstreams = {
            u.service if "." in u.service else f"{u.service}.{namespace}"
            for u in self.settings.listen.upstreams
        }
        return sorted({*self.state.subscriptions(), *upstreams, *self._requested})

    # === AdminState ===

    def is_live(self) -> bool:
        return True

    def readiness(self) -> tuple[bool, str]:
        ready, reason = self.state.readiness()
        if not ready:
            return ready, reason
        for worker in self._workers:
            if not worker.started:
                return False, f"worker {worker.index} is not running"
            if worker.error is not None:
                return False, f"worker {worker.index} refused the config: {worker.error}"
            if worker.applied != self.version:
                return False, f"worker {worker.index} has not applied config version {self.version}"
            if worker.cert_generation != self.cert_generation or not worker.cert_ok:
                return False, f"worker {worker.index} has not loaded the current certificate"
        return True, "ready"

    def render_metrics(self) -> bytes:
        """Every worker's exposition, added up (blocks this loop for at most SCRAPE_TIMEOUT:
        the supervisor's loop carries no traffic)."""
        request_id = next(self._scrape_ids)
        deadline = time.monotonic() + SCRAPE_TIMEOUT
        asked = [
            w for w in self._workers
            if w.started and w.metrics is not None
            and w.metrics.send({"type": "scrape", "id": request_id}, SCRAPE_TIMEOUT)
        ]  # fmt: skip
        for worker in asked:
            assert worker.metrics is not None
            reply = worker.metrics.receive(deadline, request_id)
            if reply is not None and isinstance(reply.get("text"), str):
                worker.last_scrape = parse_exposition(reply["text"])
            else:  # keep its last answer: a counter must not seem to go back
                log.warning("worker %d did not answer a metrics scrape in time", worker.index)
        parts = [parse_exposition(self.state.render_metrics().decode()), self._retired]
        parts += [w.last_scrape for w in self._workers]
        running = sum(w.started for w in self._workers)
        restarts = sum(w.restarts for w in self._workers)
        own = (
            "# HELP gossamer_proxy_workers Worker processes of this sidecar.\n"
            "# TYPE gossamer_proxy_workers gauge\n"
            f'gossamer_proxy_workers{{state="configured"}} {len(self._workers)}\n'
            f'gossamer_proxy_workers{{state="running"}} {running}\n'
            "# HELP gossamer_proxy_worker_restarts_total Worker processes restarted.\n"
            "# TYPE gossamer_proxy_worker_restarts_total counter\n"
            f"gossamer_proxy_worker_restarts_total {restarts}\n"
        )
        return render_exposition(merge(parts)) + own.encode()

    def config_json(self) -> dict[str, Any]:
        data = self.state.config_json()
        data["workers"] = [w.describe() for w in self._workers]
        return data


async def supervise(settings: ProxySettings, stop: asyncio.Event | None = None) -> None:
    """Run a sidecar of ``settings.listen.workers`` worker processes until ``stop`` is set
    (or SIGTERM/SIGINT when ``stop`` is None)."""
    loop = asyncio.get_running_loop()
    credentials = _SupervisedCredentials(settings.identity.workdir, settings.control.ca_file)
    worker_settings, held = reserve_all(settings)
    try:
        supervisor = Supervisor(worker_settings, credentials, str(logging.getLogger().level))
        admin = AdminServer(settings.listen.admin, supervisor)
        admin_addr = await admin.start()
        inbound = worker_settings.listen.inbound

        def workload() -> dict[str, object]:
            return {
                "service": settings.workload.service,
                "namespace": settings.workload.namespace,
                "address": settings.workload.advertise_host,
                "inbound_port": inbound.port if inbound else None,
                "admin_port": admin_addr.port,
                "labels": dict(settings.workload.labels),
            }

        client = ControlClient(worker_settings, credentials, supervisor, workload)
        supervisor.client = client
        supervisor.start()
        client_task = spawn(client.run(), name="control-plane client")
        shipper = start_shipping(client, settings.identity.workdir, credentials)
        for kind in ("tap-start", "tap-stop"):  # every worker taps its share of the requests
            client.handlers[kind] = supervisor.broadcast
        for upstream in worker_settings.listen.upstreams:
            log.info("tcp upstream %s listening on %s", upstream.service, upstream.address)
        log.info(
            "gossamer proxy started service=%s.%s outbound=%s inbound=%s admin=%s workers=%d",
            settings.workload.service,
            settings.workload.namespace,
            worker_settings.listen.outbound or "off",
            inbound or "off",
            admin_addr,
            settings.listen.workers,
        )
        if stop is None:
            stop = asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await client.leave()  # callers stop choosing this proxy while the workers drain
        await supervisor.stop()
        await cancel_and_wait([shipper.task] if shipper.task is not None else [])
        await client.close()
        client_task.cancel()
        await admin.close()
    finally:
        for sock in held:
            sock.close()
