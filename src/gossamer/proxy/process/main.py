"""Entry point of the sidecar: wire settings, identity, listeners, admin and the control client.

``python -m gossamer.proxy`` (or ``gossamer proxy``) reads ``GOSSAMER_PROXY_*`` settings, runs
on uvloop, and on SIGTERM/SIGINT stops accepting, lets in-flight requests finish (bounded), and
exits 0. Only what the data path needs is imported here: no pydantic, no web framework, no
cryptography (keys and CSRs are made by a short-lived child process).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

import uvloop

from gossamer import compiled
from gossamer.identity.credentials import Credentials, CredentialsError, TlsContexts
from gossamer.proxy.h2 import close_h2
from gossamer.proxy.http1.inbound import InboundListener
from gossamer.proxy.http1.outbound import OutboundConnection
from gossamer.proxy.process.admin import AdminServer
from gossamer.proxy.process.audit_shipper import start_shipping
from gossamer.proxy.process.control_client import ControlClient
from gossamer.proxy.process.heap import settle_heap
from gossamer.proxy.process.settings import Address, ProxySettings, SettingsError
from gossamer.proxy.state import ProxyState
from gossamer.proxy.tasks import cancel_and_wait, spawn
from gossamer.proxy.tcp.proxy import TcpProxy, TcpSnapshotHandler

__all__ = ["DataPath", "main", "serve", "start_data_path"]

log = logging.getLogger("gossamer.proxy")

DRAIN_SECONDS = 5.0


@dataclass(eq=False)
class DataPath:
    """The listeners of one process that carries traffic (``serve`` or a worker of
    ``proxy/workers/supervisor.py``) and how to drain them."""

    state: ProxyState
    tcp: TcpProxy
    listener: InboundListener | None
    outbound_server: asyncio.Server | None
    inbound_addr: Address | None
    outbound_addr: Address | None
    sweeper: asyncio.Task[None]

    async def drain(self) -> None:
        """Stop accepting, finish what is in flight (bounded), then close the pools."""
        state = self.state
        state.draining = True
        if self.outbound_server is not None:
            self.outbound_server.close()
        if self.listener is not None:
            self.listener.close()
        tcp_drain = spawn(self.tcp.drain(DRAIN_SECONDS), name="tcp drain")
        for conn in list(state.connections):
            if not conn.busy():
                conn.close()
        if state.connections:
            state.all_closed.clear()
            try:
                await asyncio.wait_for(state.all_closed.wait(), DRAIN_SECONDS)
            except TimeoutError:
                log.warning(
                    "drain deadline passed with %d connections open", len(state.connections)
                )
                for conn in list(state.connections):
                    conn.abort()
        await tcp_drain
        state.outbound_pool.close_all()
        state.app_pool.close_all()
        close_h2(state)
        self.sweeper.cancel()
        if state.span_exporter is not None:  # the spans of the last requests go out too
            await state.span_exporter.close()
        if state.audit_spool is not None:  # written and fsynced
            state.audit_spool.close()
        if state.access_log is not None:  # the lines of the last requests too
            state.access_log.close()


async def start_data_path(
    settings: ProxySettings,
    state: ProxyState,
    credentials: TlsContexts,
) -> DataPath:
    """Bind the outbound, inbound and TCP upstream listeners of ``settings`` for ``state``.

    With ``settings.listen.workers > 1`` every listener sets ``SO_REUSEPORT``: each worker
    process binds the same ports and the kernel spreads new connections over them.
    """
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_exception_handler)
    tcp = TcpProxy(state, credentials)
    state.tunnels = tcp
    listener: InboundListener | None = None
    inbound_addr: Address | None = None
    if settings.listen.inbound is not None:
        listener = InboundListener(state, settings.listen.inbound, credentials)
        listener.tcp = tcp
        inbound_addr = listener.start()
    outbound_server: asyncio.Server | None = None
    outbound_addr: Address | None = None
    if settings.listen.outbound is not None:
        outbound_server = await loop.create_server(
            lambda: OutboundConnection(state),
            settings.listen.outbound.host,
            settings.listen.outbound.port,
            reuse_address=True,
            reuse_port=settings.listen.workers > 1 or None,
            backlog=1024,
        )
        outbound_addr = Address.bound(outbound_server)
    for name, address in (await tcp.start()).items():
        log.info("tcp upstream %s listening on %s", name, address)
    sweeper = spawn(state.sweep_forever(), name="connection sweeper")
    return DataPath(state, tcp, listener, outbound_server, inbound_addr, outbound_addr, sweeper)


async def serve(settings: ProxySettings, stop: asyncio.Event | None = None) -> None:
    """Run one sidecar until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None).

    With ``settings.listen.workers > 1`` this process supervises that many worker processes
    (``proxy/workers/supervisor.py``); with 1 (the default) everything runs in this process.
    """
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_exception_handler)
    if settings.listen.workers > 1:
        from gossamer.proxy.workers.supervisor import supervise

        await supervise(settings, stop)
        return
    credentials = Credentials(settings.identity.workdir, settings.control.ca_file)
    state = ProxyState(settings, credentials=credentials)
    state.cert_ready = lambda: credentials.ready

    admin = AdminServer(settings.listen.admin, state)
    admin_addr = await admin.start()
    path = await start_data_path(settings, state, credentials)
    workload = _workload_report(settings, path.inbound_addr, admin_addr)
    client = ControlClient(settings, credentials, TcpSnapshotHandler(state, path.tcp), workload)
    state.subscribe_hook = client.subscribe
    state.jwks_hook = client.request_jwks
    client_task = spawn(client.run(), name="control-plane client")
    shipper = start_shipping(client, settings.identity.workdir, credentials)
    client.handlers["tap-start"] = state.start_tap
    client.handlers["tap-stop"] = state.stop_tap
    state.tap_hook = client.send
    _log_started(settings, path, admin_addr)

    settle_heap()  # what exists now lives as long as the process
    await _stopped(stop)

    # Leave (callers stop choosing us), stop accepting, finish what is in flight (bounded),
    # then close everything.
    await client.leave()
    await path.drain()
    await cancel_and_wait([shipper.task] if shipper.task is not None else [])
    await client.close()
    client_task.cancel()
    await admin.close()


def _workload_report(
    settings: ProxySettings, inbound_addr: Address | None, admin_addr: Address
) -> Callable[[], dict[str, object]]:
    """What the control client tells the control plane about the workload beside us."""

    def workload() -> dict[str, object]:
        return {
            "service": settings.workload.service,
            "namespace": settings.workload.namespace,
            "address": settings.workload.advertise_host,
            "inbound_port": inbound_addr.port if inbound_addr else None,
            "admin_port": admin_addr.port,
            "labels": dict(settings.workload.labels),
        }

    return workload


def _log_started(settings: ProxySettings, path: DataPath, admin_addr: Address) -> None:
    """The start-up line: who we are, where we listen, and which code runs."""
    log.info(
        "gossamer proxy started service=%s.%s outbound=%s inbound=%s admin=%s code=%s",
        settings.workload.service,
        settings.workload.namespace,
        path.outbound_addr or "off",
        path.inbound_addr or "off",
        admin_addr,
        compiled.STATE,
    )
    if compiled.STATE.startswith("stale"):
        log.warning("compiled modules not used (%s): run python -m gossamer.build_native",
                    compiled.STATE)


async def _stopped(stop: asyncio.Event | None) -> None:
    """Return once ``stop`` is set or, when it is None, on SIGTERM or SIGINT."""
    if stop is None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """Peers that vanish mid-handshake are routine for a proxy: log them at debug level."""
    exc = context.get("exception")
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        log.debug("connection error: %s", context.get("message"))
        return
    loop.default_exception_handler(context)


def _raise_file_limit(max_connections: int) -> None:
    """Let the process hold the connections its cap allows (each may need an upstream too):
    raise the soft limit on open files toward the hard one when it is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * max_connections + 512
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            logging.getLogger("gossamer.proxy").warning(
                "cannot raise the open-file limit to %d: %s", wanted, exc
            )


HELP = """usage: gossamer proxy

Run a sidecar proxy. It takes no flags: its settings come from the environment
(docs/internals.md §1; gossamer up and gossamer run set them for you).

required:
  GOSSAMER_PROXY_SERVICE          the workload's service name
  GOSSAMER_PROXY_WORKDIR          a private directory for its key and certificate
  GOSSAMER_PROXY_CONTROL_ADDR     the control plane's stream, HOST:PORT
  GOSSAMER_PROXY_CA_FILE          the mesh's root certificate
  GOSSAMER_PROXY_JOIN_TOKEN       a one-time join token (gossamer: POST /v1/join-tokens)
listeners (HOST:PORT, or off):
  GOSSAMER_PROXY_OUTBOUND_ADDR    from the app (127.0.0.1:15001)
  GOSSAMER_PROXY_INBOUND_ADDR     mTLS from other sidecars (127.0.0.1:15006)
  GOSSAMER_PROXY_ADMIN_ADDR       /ready, /metrics, /config (127.0.0.1:15000)
  GOSSAMER_PROXY_UPSTREAMS        TCP listeners, SERVICE=[HOST:]PORT,...
the workload:
  GOSSAMER_PROXY_APP_ADDR         the local app (none: client-only)
  GOSSAMER_PROXY_TCP_APP_ADDR     the app's TCP port beside an HTTP one
  GOSSAMER_PROXY_NAMESPACE, GOSSAMER_PROXY_LABELS (k=v,...), GOSSAMER_PROXY_ADVERTISE_HOST
  GOSSAMER_PROXY_DEFAULT_SERVICE  a gateway: where a Host outside the mesh goes
limits and scale:
  GOSSAMER_PROXY_WORKERS, GOSSAMER_PROXY_MAX_CONNECTIONS (4096),
  GOSSAMER_PROXY_MAX_PENDING_HANDSHAKES (1024), GOSSAMER_PROXY_LOCAL_UIDS (who may use
  the local ports), GOSSAMER_LOG_LEVEL
"""


def main(argv: list[str] | None = None) -> int:
    """Run the sidecar from ``GOSSAMER_PROXY_*`` settings; exit code 2 for bad settings."""
    args = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in args):
        print(HELP, end="")
        return 0
    if args:
        print(f"gossamer proxy: takes no arguments (got {' '.join(args)}); see --help",
              file=sys.stderr)
        return 2
    logging.basicConfig(
        level=os.environ.get("GOSSAMER_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = ProxySettings.from_env()
    except SettingsError as exc:
        print(f"gossamer proxy: {exc}", file=sys.stderr)
        return 2
    _raise_file_limit(settings.listen.max_connections)
    try:
        uvloop.run(serve(settings))
    except CredentialsError as exc:
        print(f"gossamer proxy: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gossamer proxy: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0
