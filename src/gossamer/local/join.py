"""``gossamer run``: wrap one command with a sidecar joined to a running mesh.

Gets a join token from the control plane, starts a sidecar on free ports, waits for its
/ready, then runs the command with ``PORT`` and ``HTTP_PROXY`` set, forwards SIGINT/SIGTERM to
it, stops the sidecar when it exits and returns its exit code (128+N when killed by signal N).
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
from gossamer.local.launch import (
    Probe,
    SidecarConfig,
    app_env,
    http_ok,
    sidecar_argv,
    sidecar_env,
    upstream_env,
    wait_for,
)
from gossamer.local.paths import DataDir
from gossamer.local.ports import PortAllocator
from gossamer.local.procs import ProcessRef, proc_start_time, spawn, stop_all, tail
from gossamer.local.runner import Log, StartupError

__all__ = ["JoinSpec", "run_joined"]

READY_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class JoinSpec:
    """What ``gossamer run`` was asked to run."""

    service: str
    app_port: int
    command: tuple[str, ...]
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    upstreams: tuple[tuple[str, int], ...] = ()  # (service, local port) TCP listeners


def _ca_file(data: DataDir, client: ControlClient, workdir: Path) -> Path:
    """The local data dir's root certificate, else the trust bundle fetched from the API."""
    if data.ca_file.is_file():
        return data.ca_file
    path = workdir.parent / f"{workdir.name}-ca.crt"
    path.write_text(client.trust_bundle(), encoding="utf-8")
    return path


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code


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

    Raises ``StartupError`` when the sidecar cannot be started or does not become ready, and
    ``ControlError`` when the control plane refuses the join token.
    """
    env = dict(os.environ if parent_env is None else parent_env)
    data = DataDir(data_dir.resolve())
    data.create()
    instance = f"{spec.service}-run-{os.getpid()}"
    workdir = data.workdir(instance)
    shutil.rmtree(workdir, ignore_errors=True)
    ports = PortAllocator({spec.app_port, *(port for _, port in spec.upstreams)})
    outbound, inbound, admin = ports.allocate(), ports.allocate(), ports.allocate()
    config = SidecarConfig(
        service=spec.service, namespace=spec.namespace, admin_port=admin,
        control_addr=stream_addr, ca_file=_ca_file(data, client, workdir), workdir=workdir,
        app_port=spec.app_port, outbound_port=outbound, inbound_port=inbound,
        labels=dict(spec.labels), upstreams=spec.upstreams,
    )
    token = client.join_token(spec.service, spec.namespace)
    log_path = data.log_path(f"{instance}-proxy")
    sidecar = spawn(sidecar_argv(), env=sidecar_env(config, token, env), log_path=log_path)
    sidecar_ref = ProcessRef(sidecar.pid, proc_start_time(sidecar.pid))
    try:
        log(f"sidecar for {spec.service} started (pid {sidecar.pid}, admin "
            f"{config.admin_address}, log {log_path})")
        probe = Probe("sidecar", partial(http_ok, f"http://{config.admin_address}/ready"),
                      lambda: sidecar.poll() is None)
        not_ready, dead = wait_for([probe], timeout=READY_TIMEOUT)
        if dead or not_ready:
            why = "exited" if dead else f"was not ready within {READY_TIMEOUT:.0f} s"
            raise StartupError(f"the sidecar {why}; last lines of {log_path}:\n{tail(log_path)}")
        return _run_command(spec, app_env(port=spec.app_port, outbound_port=outbound,
                                          parent=env, extra=upstream_env(spec.upstreams)))
    finally:
        stop_all([sidecar_ref], grace=5.0, children={sidecar.pid: sidecar})
        shutil.rmtree(workdir, ignore_errors=True)


def _run_command(spec: JoinSpec, env: dict[str, str]) -> int:
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
        code = proc.wait()
    finally:
        done.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _exit_code(code)
