"""The supervisor behind ``gossamer up``: starts, watches, restarts and stops a local mesh.

Order of start: control plane (wait for /healthz) → resources from the mesh file → for each
service replica its sidecar and its app → the ingress gateway → wait until every sidecar's
admin /ready answers 200 and every app accepts connections. Stop is the reverse, tier by tier
(SIGTERM, up to 5 s, SIGKILL). A process that exits on its own is restarted with backoff; a
sidecar gets a fresh join token first. Everything is recorded in the state file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from gossamer.local.client import ControlClient, ControlError, InvalidResources
from gossamer.local.launch import (
    Probe,
    SidecarConfig,
    app_env,
    base_env,
    control_argv,
    http_ok,
    sidecar_argv,
    sidecar_env,
    tcp_open,
    upstream_env,
    wait_for,
)
from gossamer.local.meshfile import IngressSpec, MeshFile, MeshServiceSpec, expand_command
from gossamer.local.paths import DataDir, resolve_token
from gossamer.local.ports import PortAllocator, port_is_free
from gossamer.local.procs import ProcessRef, is_running, proc_start_time, spawn, stop_all, tail
from gossamer.local.state import ChildRecord, MeshState, StateError, read_state, write_state

__all__ = ["Interrupted", "StartupError", "Supervisor", "check_not_running"]

CONTROL_TIMEOUT = 30.0
READY_TIMEOUT = 60.0
STOP_GRACE = 5.0
MAX_BACKOFF = 30.0
TIERS = ("ingress", "app", "sidecar", "control-plane")  # stop order


class StartupError(Exception):
    """The mesh could not be started; the message says what and why."""


class Interrupted(StartupError):
    def __init__(self) -> None:
        super().__init__("interrupted while starting")


Log = Callable[[str], None]


def _stderr_log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


@dataclass
class _Child:
    """A supervised process at run time (mutable: PID and restart bookkeeping change)."""

    name: str
    role: str
    argv: list[str]
    make_env: Callable[[], dict[str, str]]
    log_path: Path
    service: str | None = None
    replica: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    admin_address: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    record: ChildRecord | None = None
    restarts: int = 0
    backoff: float = 1.0
    restart_at: float | None = None
    started: float = 0.0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ref(self) -> ProcessRef | None:
        return self.record.ref if self.record is not None else None


def check_not_running(data: DataDir, log: Log = _stderr_log) -> None:
    """Raise ``StartupError`` when a mesh from ``data`` runs; clean up a dead one's leftovers."""
    try:
        state = read_state(data.state_file)
    except StateError as exc:
        log(f"ignoring unreadable state file: {exc}")
        return
    if state is None:
        return
    if is_running(state.supervisor):
        raise StartupError(
            f"a mesh is already running from {data.root} (supervisor pid "
            f"{state.supervisor_pid}); stop it with `gossamer down`"
        )
    leftovers = [ref for ref in state.all_processes()
                 if ref.pid != os.getpid() and is_running(ref)]
    if leftovers:
        log(f"stopping {len(leftovers)} leftover process(es) of a previous mesh")
        stop_all(leftovers, grace=STOP_GRACE)
    data.state_file.unlink(missing_ok=True)


class Supervisor:
    """Runs one mesh file's processes from one data directory."""

    def __init__(
        self,
        mesh: MeshFile,
        data_dir: Path,
        *,
        stop: threading.Event,
        log: Log = _stderr_log,
        parent_env: Mapping[str, str] | None = None,
    ) -> None:
        self.mesh = mesh
        self.data = DataDir(data_dir.resolve())
        self.stop_event = stop
        self.log = log
        self.parent_env = dict(os.environ if parent_env is None else parent_env)
        spec = mesh.mesh.spec
        self.api_port = spec.control_plane.api_port
        self.stream_port = spec.control_plane.stream_port
        self.control_url = f"http://127.0.0.1:{self.api_port}"
        self.stream_addr = f"127.0.0.1:{self.stream_port}"
        self.ports = PortAllocator({self.api_port, self.stream_port})
        if spec.ingress is not None:
            self.ports.reserve(spec.ingress.port)
        self.children: list[_Child] = []
        self._client: ControlClient | None = None
        self._owns_state = False
        self.state = MeshState(
            mesh=mesh.mesh.metadata.name,
            status="starting",
            supervisor_pid=os.getpid(),
            supervisor_start_time=proc_start_time(os.getpid()),
            data_dir=str(self.data.root),
            control_url=self.control_url,
            stream_addr=self.stream_addr,
            ingress_url=(f"http://127.0.0.1:{spec.ingress.port}/" if spec.ingress else None),
            mesh_file=mesh.source,
            started_at=time.time(),
        )

    # ---- start -------------------------------------------------------------------------

    def start(self) -> MeshState:
        """Start everything and wait until it is ready; on failure stop what was started."""
        try:
            self._start()
        except BaseException:
            self.shutdown()
            raise
        self._save(status="ready")
        return self.state

    def _start(self) -> None:
        self.data.create()
        check_not_running(self.data, self.log)
        self._owns_state = True  # from here on the state file is ours to write
        self._check_ports()
        self._save()
        self._start_control_plane()
        self._apply_resources()
        spec = self.mesh.mesh.spec
        for service in spec.services:
            namespace = self.mesh.namespace_of(service)
            for replica in range(service.replicas):
                self._start_replica(service.name, namespace, replica, service)  # by group
        if spec.ingress is not None:
            self._start_ingress(spec.ingress)
        self._wait_ready()

    def _check_ports(self) -> None:
        spec = self.mesh.mesh.spec

        def origin(where: str) -> str:  # the flag that set the port, else its field
            return self.mesh.port_flags.get(where, where)

        wanted = {f"control plane API ({origin('controlPlane.apiPort')})": self.api_port,
                  f"control plane stream ({origin('controlPlane.streamPort')})": self.stream_port}
        if spec.ingress is not None:
            wanted[f"ingress ({origin('ingress.port')})"] = spec.ingress.port
        for service in spec.services:
            for upstream in service.upstreams:
                for replica in range(service.replicas):
                    what = f"upstream {upstream.service} of {service.name}-{replica}"
                    wanted[what] = upstream.port + replica
                    self.ports.reserve(upstream.port + replica)
        busy = [f"port {port} for the {what}" for what, port in wanted.items()
                if not port_is_free(port)]
        if busy:
            raise StartupError(
                "already in use: " + "; ".join(busy) + " (change it in the mesh file; the "
                "control plane's and the ingress's also with `gossamer up --api-port, "
                "--stream-port, --ingress-port`)"
            )

    def _client_or_fail(self) -> ControlClient:
        if self._client is None:
            raise StartupError("control plane is not started")
        return self._client

    def _start_control_plane(self) -> None:
        child = _Child(
            name="control-plane",
            role="control-plane",
            argv=control_argv(self.data.root, self.api_port, self.stream_port),
            make_env=lambda: base_env(self.parent_env),
            log_path=self.data.log_path("control-plane"),
            ports={"api": self.api_port, "stream": self.stream_port},
        )
        self.log(f"starting control plane on {self.control_url} (stream {self.stream_addr})")
        self._launch(child)
        probe = Probe(
            "control plane", lambda: http_ok(self.control_url + "/healthz"), child.running
        )
        not_ready, dead = wait_for([probe], timeout=CONTROL_TIMEOUT, stop=self.stop_event)
        self._raise_if_interrupted()
        if dead or not_ready:
            why = "exited" if dead else f"did not answer /healthz within {CONTROL_TIMEOUT:.0f} s"
            raise StartupError(self._failure("control plane", why, child))
        token_probe = Probe("admin token", lambda: resolve_token(self.data.root) is not None,
                            child.running)
        not_ready, dead = wait_for([token_probe], timeout=10.0, stop=self.stop_event)
        self._raise_if_interrupted()
        token = resolve_token(self.data.root)
        if token is None:
            raise StartupError(self._failure("control plane", "wrote no admin.token", child))
        self._client = ControlClient(self.control_url, token)

    def _apply_resources(self) -> None:
        if not self.mesh.resources:
            return
        client = self._client_or_fail()
        try:
            applied = client.apply(json.dumps(list(self.mesh.resources)),
                                   content_type="application/json")
        except InvalidResources as exc:
            lines = [str(replace(err, document=err.document + 1)) for err in exc.errors]
            raise StartupError(
                "the mesh file's resources were refused:\n" + "\n".join(lines)
            ) from None
        except ControlError as exc:
            raise StartupError(f"applying the mesh file's resources failed: {exc}") from exc
        for item in applied:
            self.log(f"{str(item.get('kind', '?')).lower()}/{item.get('name')} "
                     f"{item.get('action', 'applied')}")

    def _sidecar_child(self, name: str, config: SidecarConfig, role: str, replica: int | None,
                       ports: dict[str, int]) -> _Child:
        client = self._client_or_fail()

        def make_env() -> dict[str, str]:
            token = client.join_token(config.service, config.namespace)
            return sidecar_env(config, token, self.parent_env)

        return _Child(
            name=name, role=role, argv=sidecar_argv(), make_env=make_env,
            log_path=self.data.log_path(name), service=config.service, replica=replica,
            ports=ports, admin_address=config.admin_address,
        )

    def _start_replica(self, group: str, namespace: str, replica: int,
                       spec: MeshServiceSpec) -> None:
        instance = f"{group}-{replica}"
        service = spec.service_name
        app_port, outbound, inbound, admin = (self.ports.allocate() for _ in range(4))
        upstreams = tuple((u.service, u.port + replica) for u in spec.upstreams)
        workdir = self.data.workdir(instance)
        shutil.rmtree(workdir, ignore_errors=True)
        config = SidecarConfig(
            service=service, namespace=namespace, admin_port=admin,
            control_addr=self.stream_addr, ca_file=self.data.ca_file, workdir=workdir,
            app_port=app_port, outbound_port=outbound, inbound_port=inbound,
            labels=dict(spec.labels), upstreams=upstreams, workers=spec.sidecar.workers,
        )
        ports = {"app": app_port, "outbound": outbound, "inbound": inbound, "admin": admin}
        sidecar = self._sidecar_child(f"{instance}-proxy", config, "sidecar", replica, ports)
        self.log(f"starting sidecar {sidecar.name} (admin {config.admin_address})")
        self._launch(sidecar)
        extra = {**upstream_env(upstreams), **spec.env, "GOSSAMER_INSTANCE": instance}
        app = _Child(
            name=instance, role="app", argv=expand_command(spec.command, port=app_port),
            make_env=lambda: app_env(port=app_port, outbound_port=outbound,
                                     parent=self.parent_env, extra=extra),
            log_path=self.data.log_path(instance), service=service, replica=replica,
            ports={"app": app_port},
        )
        self.log(f"starting app {instance} on 127.0.0.1:{app_port}")
        self._launch(app)

    def _start_ingress(self, spec: IngressSpec) -> None:
        admin = self.ports.allocate()
        workdir = self.data.workdir("ingress")
        shutil.rmtree(workdir, ignore_errors=True)
        config = SidecarConfig(
            service="ingress", namespace=self.mesh.mesh.metadata.namespace, admin_port=admin,
            control_addr=self.stream_addr, ca_file=self.data.ca_file, workdir=workdir,
            outbound_port=spec.port, inbound_port=None, default_service=spec.service,
            workers=spec.workers,
        )
        child = self._sidecar_child("ingress", config, "ingress", None,
                                    {"outbound": spec.port, "admin": admin})
        self.log(f"starting ingress gateway on 127.0.0.1:{spec.port} → {spec.service}")
        self._launch(child)

    def _wait_ready(self) -> None:
        probes: list[Probe] = []
        for child in self.children:
            if child.admin_address is not None:
                url = f"http://{child.admin_address}/ready"
                probes.append(Probe(child.name, partial(http_ok, url), child.running))
            elif child.role == "app":
                port = child.ports["app"]
                probes.append(Probe(child.name, partial(tcp_open, port), child.running))
        not_ready, dead = wait_for(probes, timeout=READY_TIMEOUT, stop=self.stop_event)
        self._raise_if_interrupted()
        by_name = {child.name: child for child in self.children}
        if dead:
            raise StartupError(self._failure(dead[0].name, "exited", by_name[dead[0].name]))
        if not_ready:
            names = ", ".join(probe.name for probe in not_ready)
            first = by_name[not_ready[0].name]
            raise StartupError(self._failure(
                names, f"not ready after {READY_TIMEOUT:.0f} s", first))

    def _raise_if_interrupted(self) -> None:
        if self.stop_event.is_set():
            raise Interrupted()

    def _failure(self, what: str, why: str, child: _Child) -> str:
        code = child.proc.poll() if child.proc is not None else None
        exit_note = f" (exit code {code})" if code is not None else ""
        return (f"{what} {why}{exit_note}; last lines of {child.log_path}:\n"
                f"{tail(child.log_path) or '(empty log)'}")

    # ---- processes and state ----------------------------------------------------------

    def _launch(self, child: _Child) -> None:
        try:
            env = child.make_env()
        except ControlError as exc:
            raise StartupError(f"cannot start {child.name}: {exc}") from exc
        try:
            child.proc = spawn(child.argv, env=env, log_path=child.log_path)
        except OSError as exc:
            raise StartupError(f"cannot start {child.name} ({child.argv[0]}): {exc}") from exc
        child.started = time.time()
        if child not in self.children:
            self.children.append(child)
        child.record = ChildRecord(
            name=child.name, role=child.role, pid=child.proc.pid,
            start_time=proc_start_time(child.proc.pid), log_path=str(child.log_path),
            started_at=child.started, service=child.service, replica=child.replica,
            ports=dict(child.ports), admin_address=child.admin_address,
            restarts=child.restarts,
            last_exit=child.record.last_exit if child.record is not None else None,
        )
        self.state = self.state.with_child(child.record)
        self._save()

    def _save(self, **changes: object) -> None:
        if changes:
            self.state = replace(self.state, **changes)  # type: ignore[arg-type]
        write_state(self.data.state_file, self.state)

    def fail(self, message: str) -> None:
        """Record a failed start in the state file (for a waiting ``gossamer up --detach``).

        Nothing is written when the state file belongs to another, running mesh.
        """
        if self._owns_state:
            self._save(status="failed", error=message, children=())

    # ---- watch -------------------------------------------------------------------------

    def watch(self, interval: float = 0.5) -> None:
        """Restart crashed children with backoff until the stop event is set."""
        while not self.stop_event.wait(interval):
            now = time.time()
            for child in self.children:
                self._check_child(child, now)

    def _check_child(self, child: _Child, now: float) -> None:
        if child.proc is None or child.record is None:
            return
        code = child.proc.poll()
        if code is None:
            return
        if child.restart_at is None:
            first = child.restarts == 0 or now - child.started > 60
            child.backoff = 1.0 if first else min(child.backoff * 2, MAX_BACKOFF)
            child.restart_at = now + child.backoff
            child.record = replace(child.record, last_exit=code)
            self.state = self.state.with_child(child.record)
            self._save()
            self.log(f"{child.name} exited with code {code}; restarting in {child.backoff:.0f} s")
            return
        if now < child.restart_at:
            return
        child.restart_at = None
        child.restarts += 1
        try:
            self._launch(child)
        except StartupError as exc:
            # child.proc still holds the exited process, so the next check retries
            child.backoff = min(child.backoff * 2, MAX_BACKOFF)
            child.restart_at = now + child.backoff
            self.log(f"restart of {child.name} failed: {exc}")
        else:
            self.log(f"restarted {child.name} (pid {child.proc.pid if child.proc else '?'})")

    # ---- stop --------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every child tier by tier (reverse start order)."""
        if self.children:
            self._save(status="stopping")
        for tier in TIERS:
            members = [c for c in self.children if c.role == tier]
            refs = [ref for c in members if (ref := c.ref()) is not None]
            procs = {c.proc.pid: c.proc for c in members if c.proc is not None}
            if refs:
                killed = stop_all(refs, grace=STOP_GRACE, children=procs)
                for ref in killed:
                    self.log(f"pid {ref.pid} did not stop within {STOP_GRACE:.0f} s; killed")
        if self._client is not None:
            self._client.close()
            self._client = None
