"""The state of one sidecar process: the config in force and what every connection shares.

``ProxyState`` owns the compiled route table (swapped whole when a snapshot compiles, kept
when one does not), the upstream pools, metrics, request-id generation and on-demand discovery
of services the app calls for the first time. It is the snapshot handler of the control-plane
client and the state behind the admin server.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from gossamer.protocol.http1 import ProxyError
from gossamer.proxy.h2.stats import render_grpc_metrics
from gossamer.proxy.http1.upstream import Pool
from gossamer.proxy.observe.access_log import AccessLog
from gossamer.proxy.observe.audit_spool import AuditSpool
from gossamer.proxy.observe.metrics import (
    Metrics,
    render_access_log_counts,
    render_audit_counts,
    render_expiries,
    render_span_counts,
)
from gossamer.proxy.observe.otlp import SpanExporter
from gossamer.proxy.observe.trace_context import Tracing
from gossamer.proxy.pipeline.access_log import AccessLogStage
from gossamer.proxy.pipeline.audit import AuditStage
from gossamer.proxy.pipeline.slots import Stage, Stages
from gossamer.proxy.pipeline.tap import TapSpec, TapStage
from gossamer.proxy.pipeline.tracing import TraceStage
from gossamer.proxy.process.settings import ProxySettings
from gossamer.proxy.snapshot.table import OutboundService, RouteTable, compile_snapshot, service_key
from gossamer.proxy.tasks import spawn

if TYPE_CHECKING:
    import ssl

    from gossamer.identity.credentials import TlsContexts
    from gossamer.proxy.accepted import AcceptedConnection
    from gossamer.snapshot_schema import Snapshot

__all__ = ["ProxyState"]

log = logging.getLogger("gossamer.proxy")

DISCOVERY_TIMEOUT = 3.0
IDLE_TIMEOUT = 120.0  # a keep-alive downstream connection with nothing to do is closed after
HEADER_TIMEOUT = 30.0  # a request head must arrive whole within this (slow-loris guard)
BODY_TIMEOUT = 60.0  # a request body that makes no progress this long gets 408
# A stream whose request is whole and whose response makes no progress this long (no policy
# timeout cut it first) gets 504 ``upstream-idle-timeout`` (or is cut, once started).
STREAM_IDLE_TIMEOUT = 300.0
NEGATIVE_TTL = 5.0  # an "unknown service" answer is reused this long, then asked again
SWEEP_INTERVAL = 2.0
TAP_INTERVAL = 0.25  # between two batches of tap events
TAP_BATCH = 1000  # events of one session waiting, at most (the rate limit keeps it far below)


def _client_context(credentials: TlsContexts) -> Callable[[], ssl.SSLContext]:
    """The credentials' current mTLS client context, read per new upstream connection."""
    return lambda: credentials.client_context


class ProxyState:
    def __init__(
        self,
        settings: ProxySettings,
        *,
        credentials: TlsContexts | None = None,
    ) -> None:
        self.settings = settings
        self.credentials = credentials  # the mTLS contexts to other sidecars; None: no mTLS
        self.metrics = Metrics(settings.workload.service, settings.workload.namespace)
        self.table: RouteTable | None = None
        self.snapshot: Mapping[str, Any] | None = None
        self.last_error: str | None = None
        self.outbound_pool = Pool(tls=None if credentials is None else _client_context(credentials))
        self.egress_pool = Pool()  # plain HTTP to hosts outside the mesh (snapshot/egress.py)
        self.app_pool = Pool(from_app=True)
        self.span_exporter: SpanExporter | None = None  # while the snapshot traces
        self._export: tuple[object, ...] | None = None
        # The audit spool, made when an AUDIT policy first applies to this workload; its
        # directory is ``<workdir>/audit/<audit_slot>`` (a worker sets its own slot).
        self.audit_spool: AuditSpool | None = None
        self.audit_slot = "main"
        self.access_log: AccessLog | None = None  # while the config has one
        # Live taps (pipeline/tap.py): the sessions, their events not yet sent, and how they
        # are sent (set by main: a tap-event message to the control plane).
        self.taps: dict[str, TapSpec] = {}
        self._tap_out: dict[str, list[dict[str, Any]]] = {}
        self.tap_hook: Callable[[dict[str, Any]], object] | None = None
        self._tap_task: asyncio.Task[None] | None = None
        app = settings.workload.app
        self.app_key: tuple[str, int] | None = None if app is None else (app.host, app.port)
        self.connections: set[AcceptedConnection] = set()
        self.tcp_open = 0  # TCP relays (kept by tcp.proxy); they count toward the cap too
        self.tunnels: Any = None  # the TcpProxy (tcp.proxy): CONNECT tunnels' relays
        self.max_connections = settings.listen.max_connections
        self.local_uids = settings.listen.local_uids  # who may use the local ports (None: any)
        self._subscriptions: set[str] = set()
        # Names the control plane answered as unknown, and when: trusted for NEGATIVE_TTL.
        self._unknown_at: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Future[None]] = {}
        # Request ids "<8 random hex>-<counter in hex>": made by C calls alone (the bound
        # ``__next__`` of a map over a counter), no Python frame per request.
        template = os.urandom(4).hex().encode() + b"-%x"
        self.new_request_id: Callable[[], bytes] = map(
            template.__mod__, itertools.count(1)
        ).__next__
        self.subscribe_hook: Any = None  # set by main: callable(list[str]) -> None
        # Set by main: callable(issuer) asking the control plane for an issuer's keys again.
        self.jwks_hook: Any = None
        self.cert_ready: Any = lambda: True  # set by main: callable() -> bool
        self.started_at = time.time()
        self.draining = False
        self.all_closed = asyncio.Event()  # set when the last downstream connection closes
        # gossamer.proxy.h2.runtime.H2Runtime, made there on first HTTP/2 use (untyped here:
        # a sidecar that never sees HTTP/2 never loads that path).
        self.h2_runtime: Any = None
        if settings.listen.default_service:
            key = service_key(settings.listen.default_service, settings.workload.namespace)
            if key:
                self._subscriptions.add(key)

    # === request path helpers ===

    async def discover(self, key: str) -> OutboundService | None:
        """Ask the control plane for a service we have not seen; None when it does not exist.

        Raises ``ProxyError`` (503) when the control plane does not answer in time.
        """
        waiter = self._waiters.get(key)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[key] = waiter
            self._unknown_at.pop(key, None)
            self._subscriptions.add(key)
            if self.subscribe_hook is not None:
                self.subscribe_hook([key])
        try:
            await asyncio.wait_for(asyncio.shield(waiter), DISCOVERY_TIMEOUT)
        except TimeoutError:
            self._waiters.pop(key, None)
            raise ProxyError(
                503, "discovery-timeout", f"the control plane did not resolve {key} in time"
            ) from None
        table = self.table
        return table.services.get(key) if table is not None else None

    def sweep(self) -> None:
        """Close idle keep-alive connections; answer stalled request heads and bodies with
        408 and stalled responses with 504."""
        now_ns = time.monotonic_ns()
        head_ns = int(HEADER_TIMEOUT * 1e9)
        idle_ns = int(IDLE_TIMEOUT * 1e9)
        body_ns = int(BODY_TIMEOUT * 1e9)
        stream_ns = int(STREAM_IDLE_TIMEOUT * 1e9)
        for conn in list(self.connections):
            conn.sweep(now_ns, head_ns, idle_ns, body_ns, stream_ns)

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.sweep()

    # === SnapshotHandler (called by the control-plane client) ===

    def subscriptions(self) -> list[str]:
        return sorted(self._subscriptions)

    def apply_snapshot(self, version: int, snapshot: dict[str, Any]) -> None:
        """Compile and install a snapshot; raise to NACK (the old table stays in force)."""
        try:
            table = compile_snapshot(
                cast("Snapshot", snapshot),  # the wire's JSON: compile_snapshot checks it
                metrics=self.metrics,
                previous=self.table,
                default_service=self.settings.listen.default_service,
                jwks_refresh=self.request_jwks,
            )
        except Exception as exc:
            self.last_error = f"version {version}: {exc}"
            log.warning("refusing config version %s: %s", version, exc)
            raise
        previous = self.table
        self._audit(table)
        try:
            self._log_access(table)
        except OSError as exc:
            path = table.access_log.path if table.access_log is not None else ""
            why = f"snapshot.access_log.path: cannot open {path}: {exc}"
            self.last_error = f"version {version}: {why}"
            log.warning("refusing config version %s: %s", version, why)
            raise
        self._trace(table)
        if self.taps:
            self._tap_stages(table)
        self.table = table
        self.snapshot = snapshot
        self.last_error = None
        if table.revoked != (previous.revoked if previous is not None else frozenset()):
            self._revoked_changed(table.revoked)
        for key in list(self._waiters):
            if key in table.services or key in table.unknown:
                waiter = self._waiters.pop(key)
                if not waiter.done():
                    waiter.set_result(None)
        for name in table.services:
            self._subscriptions.add(name)
        # Unknown names are answered, then forgotten: they never pile up in the subscriptions
        # a reconnect sends (an app asking for made-up hosts must not fill them).
        now = time.monotonic()
        unknown_at = self._unknown_at
        for name in table.unknown:
            self._subscriptions.discard(name)
            unknown_at.setdefault(name, now)
        for name in [n for n in unknown_at if n not in table.unknown]:
            del unknown_at[name]

    def _trace(self, table: RouteTable) -> None:
        """Put a ``TraceStage`` in both directions' ``trace`` slot when the snapshot traces,
        with the span exporter of its export settings (kept while they stay the same)."""
        config = table.tracing
        exporter = self.span_exporter
        if exporter is not None and (config is None or config.export != self._export):
            spawn(exporter.close(), name="span-exporter-close")  # sends what it holds
            self.span_exporter = exporter = None
        if config is None:
            return
        if exporter is None:
            workload = self.settings.workload
            resource = (("service.name", workload.service),
                        ("service.namespace", workload.namespace),
                        ("service.instance.id", f"{workload.service}-{os.getpid()}"))  # fmt: skip
            exporter = SpanExporter(config.endpoint, resource, headers=config.headers,
                                    max_queue=config.max_queue, batch=config.batch,
                                    interval=config.interval)  # fmt: skip
            self.span_exporter, self._export = exporter, config.export
        tracing = Tracing(config.ratio)
        service = self.settings.workload.service

        def traced(direction: str, stages: Stages | None) -> Stages:
            others = stages.all if stages is not None else ()
            return Stages([TraceStage(direction, tracing, exporter, service), *others])

        table.inbound_stages = traced("inbound", table.inbound_stages)
        table.outbound_stages = traced("outbound", table.outbound_stages)

    def _audit(self, table: RouteTable) -> None:
        """Put an ``AuditStage`` in the inbound ``observe`` slot when an AUDIT policy applies
        to this workload, with the spool (made once, its limits following the snapshot)."""
        authorization = table.authorization
        if authorization is None or not authorization.audit:
            return
        config = table.audit
        spool = self.audit_spool
        if spool is None:
            directory = self.settings.identity.workdir / "audit" / self.audit_slot
            spool = self.audit_spool = AuditSpool(
                directory, limit=config.spool_bytes, block=config.block
            )
        spool.limit, spool.block = config.spool_bytes, config.block
        workload = self.settings.workload
        others = table.inbound_stages.all if table.inbound_stages is not None else ()
        table.inbound_stages = Stages(
            [*others, AuditStage(spool, workload.namespace, workload.service)]
        )

    def _log_access(self, table: RouteTable) -> None:
        """Put an ``AccessLogStage`` in both directions' ``observe`` slot when the config has
        an access log, with its writer (kept while its settings stay; ``OSError`` when the
        path cannot be opened, which refuses the snapshot)."""
        config = table.access_log
        writer = self.access_log
        key = None if config is None else (config.format, config.template, config.path)
        if writer is not None and writer.key != key:
            self.access_log = None
            writer.close()
            writer = None
        if config is None:
            return
        if writer is None:
            writer = self.access_log = AccessLog(config.format, config.template, config.path)
        service = self.settings.workload.service
        app = self.settings.workload.app
        where = f"{app.host}:{app.port}" if app is not None else ""
        for direction in ("inbound", "outbound"):
            stage = AccessLogStage(writer, direction, service, where)
            stages = getattr(table, f"{direction}_stages")
            setattr(table, f"{direction}_stages",
                    Stages([*(stages.all if stages is not None else ()), stage]))  # fmt: skip

    # === live tap (pipeline/tap.py) ===

    def start_tap(self, message: dict[str, Any]) -> None:
        """A ``tap-start`` from the control plane: tap both directions for its session."""
        try:
            spec = TapSpec(message)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring a malformed tap-start: %s", exc)
            return
        self.taps[spec.id] = spec
        if self.table is not None:
            self._tap_stages(self.table)
        if self._tap_task is None or self._tap_task.done():
            self._tap_task = spawn(self._send_taps(), name="tap events")

    def stop_tap(self, message: dict[str, Any]) -> None:
        """A ``tap-stop``: the session ended (its last events still go out)."""
        if self.taps.pop(str(message.get("id")), None) is not None and self.table is not None:
            self._tap_stages(self.table)

    def _tap_emit(self, session: str, event: dict[str, Any]) -> None:
        waiting = self._tap_out.setdefault(session, [])
        if len(waiting) < TAP_BATCH:
            waiting.append(event)

    def _tap_stages(self, table: RouteTable) -> None:
        """Both directions' stages with a ``TapStage`` per session (none: as before)."""
        for direction in ("inbound", "outbound"):
            stages: Stages | None = getattr(table, f"{direction}_stages")
            kept: list[Stage] = [s for s in (stages.all if stages is not None else ())
                                 if not isinstance(s, TapStage)]  # fmt: skip
            kept += [TapStage(spec, direction, self._tap_emit) for spec in self.taps.values()]
            setattr(table, f"{direction}_stages", Stages(kept) if kept else None)

    async def _send_taps(self) -> None:
        """Send what the taps caught, every ``TAP_INTERVAL``, while any session lasts."""
        while self.taps or self._tap_out:
            await asyncio.sleep(TAP_INTERVAL)
            out, self._tap_out = self._tap_out, {}
            for session, events in out.items():
                if self.tap_hook is not None:
                    self.tap_hook({"type": "tap-event", "id": session, "events": events})
            now = time.monotonic()
            ended = [sid for sid, spec in self.taps.items() if now > spec.until]
            for sid in ended:
                self.stop_tap({"id": sid})

    def full(self) -> bool:
        """Whether the open connections (HTTP connections and TCP relays) reached the cap
        (``GOSSAMER_PROXY_MAX_CONNECTIONS``): a new one is cut then."""
        return len(self.connections) + self.tcp_open >= self.max_connections

    def _revoked_changed(self, revoked: frozenset[str]) -> None:
        """Revocations take effect on what is open too: connections from a revoked caller
        are cut, pooled connections to a revoked upstream are closed."""
        self.outbound_pool.revoke(revoked)
        runtime = self.h2_runtime
        if runtime is not None:
            runtime.outbound_pool.revoke(revoked)
        for conn in [c for c in self.connections if c.peer_serial in revoked]:
            self.metrics.error(conn.direction, "revoked-peer")
            conn.abort()

    def request_jwks(self, issuer: str) -> None:
        """A token was signed by a key of ``issuer`` this sidecar does not have: ask the
        control plane to fetch that issuer's keys again (``pipeline.authenticate``)."""
        if self.jwks_hook is not None:
            self.jwks_hook(issuer)

    def known_unknown(self, key: str) -> bool:
        """Whether the control plane said ``key`` is no service, recently enough to trust."""
        at = self._unknown_at.get(key)
        return at is not None and time.monotonic() - at < NEGATIVE_TTL

    # === AdminState (called by the admin server) ===

    def is_live(self) -> bool:
        return True

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if not self.cert_ready():
            return False, "no workload certificate yet"
        if self.table is None:
            return False, "no configuration from the control plane yet"
        return True, "ready"

    def render_metrics(self) -> bytes:
        out = self.metrics.render() + render_grpc_metrics(self.metrics)
        if self.span_exporter is not None:
            out += render_span_counts(self.span_exporter)
        if self.audit_spool is not None:
            out += render_audit_counts(self.audit_spool)
        if self.access_log is not None:
            out += render_access_log_counts(self.access_log)
        if self.credentials is not None:
            out += render_expiries(self.credentials.expiries())
        return out

    def config_json(self) -> dict[str, Any]:
        return {
            "version": self.table.version if self.table else None,
            "snapshot": self.snapshot,
            "last_error": self.last_error,
            "subscriptions": self.subscriptions(),
        }
