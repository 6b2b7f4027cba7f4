"""``gossamer run``: wrap one command with a sidecar joined to a running mesh.

Gets a join token from the control plane, starts a sidecar on free ports, waits for its
/ready, then runs the command with ``HTTP_PROXY`` (and ``PORT`` when it serves one) set,
forwards SIGINT/SIGTERM to it, stops the sidecar when it exits and returns its exit code
(128+N when killed by signal N). A job without an app port is client-only: its sidecar has no
app and no inbound listener (it is no endpoint of its service). While the command runs, a
sidecar that exits is restarted on the same ports with a fresh join token (``keeper``); when
it keeps failing, the command is stopped and ``SidecarGaveUp`` raised.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType

from gossamer.local.client import ControlClient
from gossamer.local.keeper import RestartPolicy, SidecarGaveUp, SidecarKeeper
from gossamer.local.launch import SidecarConfig, app_env, sidecar_argv, upstream_env
from gossamer.local.paths import DataDir, mesh_ca_file
from gossamer.local.ports import PortAllocator
from gossamer.local.runner import Log, StartupError

__all__ = ["JoinSpec", "RestartPolicy", "SidecarGaveUp", "run_joined"]

READY_TIMEOUT = 60.0
RESTART_POLICY = RestartPolicy()
WATCH_INTERVAL = 0.2  # how often the sidecar is looked at while the command runs
COMMAND_STOP_GRACE = 5.0  # SIGTERM to SIGKILL when the command is stopped (sidecar gave up)


@dataclass(frozen=True, slots=True)
class JoinSpec:
    """What ``gossamer run`` was asked to run."""

    service: str
    command: tuple[str, ...]
    app_port: int | None = None  # None: the command serves nothing (client-only)
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    upstreams: tuple[tuple[str, int], ...] = ()  # (service, local port) TCP listeners
    workers: int = 1  # the sidecar's GOSSAMER_PROXY_WORKERS


def _ca_file(data: DataDir) -> Path:
    """The mesh's root certificate the sidecar trusts the control plane with: never fetched
    over the network (``paths.mesh_ca_file``); ``StartupError`` without one."""
    path = mesh_ca_file(data.root)
    if path is None or not path.is_file():
        raise StartupError(
            "no root certificate for the mesh: on the control plane's machine it is "
            f"{data.ca_file}; elsewhere copy that file here and set GOSSAMER_CA_FILE to it "
            "(it is never fetched over the network)"
        )
    return path


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code


def _sidecar_config(spec: JoinSpec, data: DataDir, workdir: Path,
                    stream_addr: str) -> SidecarConfig:
    reserved = {port for _, port in spec.upstreams}
    if spec.app_port is not None:
        reserved.add(spec.app_port)
    ports = PortAllocator(reserved)
    outbound, admin = ports.allocate(), ports.allocate()
    return SidecarConfig(
        service=spec.service, namespace=spec.namespace, admin_port=admin,
        control_addr=stream_addr, ca_file=_ca_file(data), workdir=workdir,
        app_port=spec.app_port, outbound_port=outbound,
        inbound_port=ports.allocate() if spec.app_port is not None else None,
        labels=dict(spec.labels), upstreams=spec.upstreams, workers=spec.workers,
    )


def run_joined(
    spec: JoinSpec,
    *,
    client: ControlClient,
    data_dir: Path,
    stream_addr: str,
    log: Log,
    parent_env: Mapping[str, str] | None = None,
) -> int:
    """Run ``spec.command`` beside a fresh sidecar; return its exit code.

    Raises ``StartupError`` when the sidecar cannot be started or does not become ready,
    ``SidecarGaveUp`` (after stopping the command) when it keeps failing while the command
    runs, and ``ControlError`` when the control plane refuses the join token.
    """
    env = dict(os.environ if parent_env is None else parent_env)
    data = DataDir(data_dir.resolve())
    data.create()
    instance = f"{spec.service}-run-{os.getpid()}"
    workdir = data.workdir(instance)
    shutil.rmtree(workdir, ignore_errors=True)
    config = _sidecar_config(spec, data, workdir, stream_addr)
    keeper = SidecarKeeper(
        config, argv=sidecar_argv(), token=partial(client.join_token, spec.service,
                                                   spec.namespace),
        env=env, log_path=data.log_path(f"{instance}-proxy"), log=log, policy=RESTART_POLICY,
    )  # fmt: skip
    pid = keeper.start()
    try:
        log(f"{keeper.name} started (pid {pid}, admin {config.admin_address}, "
            f"log {keeper.log_path})")
        keeper.wait_ready(READY_TIMEOUT)
        assert config.outbound_port is not None
        return _run_command(spec, app_env(port=spec.app_port, outbound_port=config.outbound_port,
                                          parent=env, extra=upstream_env(spec.upstreams)),
                            keeper)
    finally:
        keeper.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _run_command(spec: JoinSpec, env: dict[str, str], keeper: SidecarKeeper) -> int:
    try:
        proc = subprocess.Popen(list(spec.command), env=env)
    except OSError as exc:
        raise StartupError(f"cannot run {spec.command[0]}: {exc.strerror or exc}") from exc
    # A terminal already delivers Ctrl-C to the command (same process group): forward SIGINT
    # only when it cannot have come from there.
    forward_sigint = not sys.stdin.isatty()
    done = threading.Event()

    def forward(signum: int, frame: FrameType | None) -> None:
        if done.is_set() or (signum == signal.SIGINT and not forward_sigint):
            return
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = _watch(proc, keeper)
    finally:
        done.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _exit_code(code)


def _watch(proc: subprocess.Popen[bytes], keeper: SidecarKeeper) -> int:
    """Wait for the command while looking after its sidecar; the command's exit status.
    When the sidecar is given up on, the command is stopped and ``SidecarGaveUp`` raised."""
    while True:
        try:
            return proc.wait(timeout=WATCH_INTERVAL)
        except subprocess.TimeoutExpired:
            pass
        try:
            keeper.check()
        except SidecarGaveUp:
            proc.terminate()
            try:
                proc.wait(timeout=COMMAND_STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
