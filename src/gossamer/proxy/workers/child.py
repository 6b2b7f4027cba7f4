"""One worker process of a multi-process sidecar (``GOSSAMER_PROXY_WORKERS`` > 1).

The supervisor (``proxy/workers/supervisor.py``) starts each worker as a fresh interpreter:
``python -m gossamer.proxy.workers.child INDEX CONTROL_FD METRICS_FD LOG_LEVEL`` (the level as a
number; the fds are its ends of the channels of ``proxy/workers/channel.py``). A worker runs the
data path only: the outbound, inbound and TCP upstream listeners, bound with ``SO_REUSEPORT``
on the same ports as its siblings (the kernel spreads new connections over them), a
``ProxyState`` and its pools. It has no control-plane stream and no admin server. It applies
the snapshots the supervisor forwards, reloads its certificate from the workdir when told,
answers metrics scrapes, and on ``drain`` (or SIGTERM, or its supervisor vanishing) drains
like a one-process sidecar and exits 0. SIGINT is left to the supervisor, which drains every
worker.

``WorkerCredentials`` reads the key, certificate and bundle that the supervisor's
``Credentials`` keeps in the workdir; it never writes there (keys, CSRs and renewals are the
supervisor's). Like ``Credentials`` it keeps one client context per ALPN protocol
(``alpn_client_context``), reloaded in place with the others.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import pickle
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from gossamer.identity.credentials import (
    CertificateInfo,
    CredentialFiles,
    CredentialsError,
    mtls_client_context,
    mtls_server_context,
    parse_certificate,
)
from gossamer.proxy.process.heap import settle_heap
from gossamer.proxy.process.main import start_data_path
from gossamer.proxy.process.settings import ProxySettings
from gossamer.proxy.state import ProxyState
from gossamer.proxy.tasks import cancel_and_wait, spawn
from gossamer.proxy.tcp.proxy import TcpSnapshotHandler
from gossamer.proxy.workers.channel import FrameError, encode, read_frame

__all__ = ["WorkerCredentials", "main", "run_worker"]

log = logging.getLogger("gossamer.proxy.workers.child")


class WorkerCredentials(CredentialFiles):
    """The workdir's certificate, key and trust bundle, loaded into long-lived contexts.

    ``reload`` loads a changed certificate into the same ``SSLContext`` objects in place (after
    checking the pair on a scratch context), so open connections carry on and new handshakes
    present the new certificate, and adopts the workdir's bundle, exactly like
    ``Credentials.install`` and ``Credentials.adopt_bundle`` do in one process.
    """

    def __init__(self, workdir: Path, ca_file: Path | None) -> None:
        self.workdir = workdir
        self.server_context = mtls_server_context()
        self.client_context = mtls_client_context()
        self._info: CertificateInfo | None = None
        self._cert_pem = b""
        self._roots = []
        self._server_alpn = []
        self._issuers = []
        self._alpn_contexts = {}
        if ca_file is not None:
            self._trust(ca_file.read_bytes(), only=False)

    @property
    def expires_at(self) -> float | None:
        return None if self._info is None else self._info.not_after

    @property
    def ready(self) -> bool:
        expires = self.expires_at
        return expires is not None and bool(self._roots) and time.time() < expires

    def reload(self) -> bool:
        """Load what the workdir holds now; True when a valid certificate is in force."""
        try:
            if self.bundle_path.exists():  # a rebuild keeps the certificate loaded so far
                self._trust(self.bundle_path.read_bytes(), only=True)
            if not self.cert_path.exists():
                return False
            cert_pem = self.cert_path.read_bytes()
            if cert_pem != self._cert_pem:
                info = parse_certificate(cert_pem)
                scratch = mtls_server_context()
                scratch.load_cert_chain(self.cert_path, self.key_path)
                for ctx in self._live_contexts():
                    ctx.load_cert_chain(self.cert_path, self.key_path)
                self._cert_pem = cert_pem
                self._info = info
                self._note_chain(cert_pem)
                log.info("loaded certificate expiring %.0f", info.not_after)
        except (OSError, ssl.SSLError, ValueError, CredentialsError) as exc:
            # e.g. read between the supervisor's renames of the key and the certificate: the
            # supervisor's cert message after the install makes us try again.
            log.warning("cannot load the workdir certificate yet: %s", exc)
            return False
        return self._info is not None


class _Worker:
    """The control channel's dispatcher inside one worker."""

    def __init__(
        self,
        writer: asyncio.StreamWriter,
        handler: TcpSnapshotHandler,
        credentials: WorkerCredentials,
        stop: asyncio.Event,
    ) -> None:
        self._writer = writer
        self._handler = handler
        self._credentials = credentials
        self._stop = stop
        # Further messages from the supervisor (a tap's start and stop), by type.
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {}

    def send(self, message: dict[str, Any]) -> None:
        if not self._writer.is_closing():
            self._writer.write(encode(message))

    def subscribe(self, names: list[str]) -> None:
        self.send({"type": "subscribe", "services": [n for n in names if n]})

    def request_jwks(self, issuer: str) -> None:
        self.send({"type": "jwks-refresh", "issuer": issuer})

    async def control_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await read_frame(reader)
                if message is None or message["type"] == "drain":
                    return
                self._dispatch(message)
        finally:
            self._stop.set()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "snapshot":
            version, snapshot = message.get("version"), message.get("snapshot")
            error: str | None = None
            try:
                if not isinstance(version, int) or not isinstance(snapshot, dict):
                    raise ValueError("snapshot message without version and snapshot")
                self._handler.apply_snapshot(version, snapshot)
            except Exception as exc:
                error = str(exc) or type(exc).__name__
            self.send({"type": "applied", "version": version, "error": error})
        elif kind == "cert":
            ok = self._credentials.reload()
            self.send({"type": "cert", "generation": message.get("generation"), "ok": ok})
        elif kind in self.handlers:
            self.handlers[kind](message)
        else:
            log.debug("ignoring supervisor message of type %r", kind)


async def _serve_metrics(sock: socket.socket, state: ProxyState) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        while True:
            message = await read_frame(reader)
            if message is None:
                return
            if message["type"] == "scrape":
                text = state.render_metrics().decode()
                writer.write(encode({"type": "metrics", "id": message.get("id"), "text": text}))
    finally:
        writer.close()


async def run_worker(control_fd: int, metrics_fd: int, index: int = 0) -> None:
    """Run one worker until the supervisor says drain, SIGTERM, or the supervisor is gone."""
    loop = asyncio.get_running_loop()
    control = socket.socket(fileno=control_fd)
    metrics = socket.socket(fileno=metrics_fd)
    reader, writer = await asyncio.open_unix_connection(sock=control)
    init = await read_frame(reader)
    if init is None or init["type"] != "init" or not isinstance(init.get("settings"), str):
        raise FrameError("the supervisor did not send init first")
    settings = pickle.loads(base64.b64decode(init["settings"]))
    if not isinstance(settings, ProxySettings):
        raise FrameError("init does not carry ProxySettings")

    credentials = WorkerCredentials(settings.identity.workdir, settings.control.ca_file)
    cert_ok = credentials.reload()
    state = ProxyState(settings, credentials=credentials)
    state.cert_ready = lambda: credentials.ready
    state.audit_slot = f"worker-{index}"  # each worker writes its own audit chain
    # The supervisor's current config comes with init and is in force before the listeners
    # open: with SO_REUSEPORT the kernel hands a listening worker its share of connections at
    # once, and a worker with no config could only refuse them.
    version, snapshot = init.get("version"), init.get("snapshot")
    first_error: str | None = None
    if isinstance(version, int) and isinstance(snapshot, dict):
        try:
            state.apply_snapshot(version, snapshot)
        except Exception as exc:  # reported to the supervisor below, like any snapshot
            first_error = str(exc) or type(exc).__name__
    path = await start_data_path(settings, state, credentials)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    worker = _Worker(writer, TcpSnapshotHandler(state, path.tcp), credentials, stop)
    state.subscribe_hook = worker.subscribe
    state.jwks_hook = worker.request_jwks
    worker.handlers.update({"tap-start": state.start_tap, "tap-stop": state.stop_tap})
    state.tap_hook = worker.send
    worker.send(
        {
            "type": "started",
            "pid": os.getpid(),
            "cert_generation": init.get("cert_generation"),
            "cert_ok": cert_ok,
        }
    )
    if isinstance(version, int):
        worker.send({"type": "applied", "version": version, "error": first_error})
    tasks = [
        spawn(worker.control_loop(reader), name="supervisor channel"),
        spawn(_serve_metrics(metrics, state), name="metrics channel"),
    ]
    settle_heap()  # what exists now lives as long as the process
    await stop.wait()
    await path.drain()
    await cancel_and_wait(tasks)
    writer.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m gossamer.proxy.workers.child INDEX CONTROL_FD METRICS_FD LOG_LEVEL``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4 or not all(a.isdigit() for a in args):
        print("usage: python -m gossamer.proxy.workers.child INDEX CONTROL_FD METRICS_FD LOG_LEVEL",
              file=sys.stderr)  # fmt: skip
        return 2
    index, control_fd, metrics_fd = (int(a) for a in args[:3])
    logging.basicConfig(
        level=int(args[3]),
        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s",
        stream=sys.stderr,
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which drains us
    try:
        uvloop.run(run_worker(control_fd, metrics_fd, index))
    except FrameError as exc:
        log.error("worker %d: %s", index, exc)
        return 2
    except OSError as exc:
        log.error("worker %d cannot listen: %s", index, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
