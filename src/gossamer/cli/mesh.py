"""``gossamer up``, ``down``, ``status`` and ``run``: the local mesh from the command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from gossamer.cli.common import (
    ControlUrlOption,
    DataDirOption,
    connect,
    data_dir_of,
    expected_errors,
    stream_addr_of,
)
from gossamer.cli.output import (
    PROXY_HEADERS,
    error,
    format_age,
    print_table,
    proxy_rows,
    say,
)
from gossamer.local.client import ControlError
from gossamer.local.join import JoinSpec, run_joined
from gossamer.local.meshfile import load_mesh_file, with_ports, workers_problem
from gossamer.local.paths import DataDir
from gossamer.local.procs import is_running
from gossamer.local.state import MeshState, read_state
from gossamer.local.up import serve, start_detached, stop_mesh
from gossamer.proxy.process.settings import parse_upstreams

__all__ = ["down", "register", "run", "status", "up"]


def _log(message: str) -> None:
    say(f"{time.strftime('%H:%M:%S')} {message}", err=True)


def _supervisor_log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)


_PORT_NAMES = {"app": "app", "outbound": "out", "inbound": "in", "admin": "admin",
               "api": "api", "stream": "stream"}


def _ports(ports: dict[str, int]) -> str:
    order = list(_PORT_NAMES)
    keys = sorted(ports, key=lambda k: order.index(k) if k in order else len(order))
    return " ".join(f"{_PORT_NAMES.get(k, k)} {ports[k]}" for k in keys) or "-"


def print_summary(state: MeshState) -> None:
    rows = [[c.name, c.role, str(c.pid), _ports(c.ports)] for c in state.children]
    print_table(("NAME", "ROLE", "PID", "PORTS"), rows,
                title=f"mesh {state.mesh} (supervisor pid {state.supervisor_pid})")
    say(f"logs: {DataDir(Path(state.data_dir)).logs_dir}/<name>.log")
    say(f"control plane: {state.control_url}")
    if state.ingress_url:
        say(f"storefront ready: {state.ingress_url}" if state.mesh == "storefront"
            else f"ingress: {state.ingress_url}")


def _port_option(flag: str, field: str) -> object:
    return typer.Option(flag, min=1, max=65535, show_default=False,
                        help=f"Use this port instead of the mesh file's {field}")


def up(
    file: Annotated[Path, typer.Option("--filename", "-f", help="Mesh file (YAML)")],
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Run in the background")] = False,
    data_dir: DataDirOption = None,
    api_port: Annotated[int | None, _port_option("--api-port", "controlPlane.apiPort")] = None,
    stream_port: Annotated[
        int | None, _port_option("--stream-port", "controlPlane.streamPort")] = None,
    ingress_port: Annotated[int | None, _port_option("--ingress-port", "ingress.port")] = None,
    foreground_supervisor: Annotated[bool, typer.Option(hidden=True)] = False,
) -> None:
    """Start a local mesh (control plane, sidecars, apps, ingress) from a mesh file."""
    root = data_dir_of(data_dir)
    ports = {"api_port": api_port, "stream_port": stream_port, "ingress_port": ingress_port}
    with expected_errors():
        mesh = with_ports(load_mesh_file(file), **ports)
        if foreground_supervisor:
            raise typer.Exit(serve(mesh, root, on_ready=lambda s: _supervisor_log("ready"),
                                   log=_supervisor_log))
        if detach:
            state = start_detached(file, root, log=_log, ports=ports)
            print_summary(state)
            say("stop it with: gossamer down" + ("" if data_dir is None else f" --data-dir {root}"))
            return

        def on_ready(state: MeshState) -> None:
            print_summary(state)
            say("press Ctrl-C to stop")

        code = serve(mesh, root, on_ready=on_ready, log=_log)
    if code:
        raise typer.Exit(code)


def down(data_dir: DataDirOption = None) -> None:
    """Stop the local mesh started by `gossamer up`."""
    root = data_dir_of(data_dir)
    with expected_errors():
        result = stop_mesh(root)
    if not result.was_running:
        say("no mesh running")
        return
    note = f" ({result.killed} killed after the grace period)" if result.killed else ""
    say(f"mesh stopped: {result.stopped} process(es){note}")


def status(
    data_dir: DataDirOption = None,
    control_url: ControlUrlOption = None,
) -> None:
    """Show the local mesh's processes and the proxies connected to the control plane."""
    root = data_dir_of(data_dir)
    with expected_errors():
        state = read_state(DataDir(root).state_file)
    if state is None:
        say("no mesh running")
        return
    now = time.time()
    rows = [["supervisor", "supervisor", str(state.supervisor_pid),
             "yes" if is_running(state.supervisor) else "NO", "-", "-", "-"]]
    for child in state.children:
        rows.append([child.name, child.role, str(child.pid), "yes" if child.alive() else "NO",
                     str(child.restarts) + (f" (last exit {child.last_exit})"
                                            if child.last_exit is not None else ""),
                     format_age(now - child.started_at), _ports(child.ports)])
    print_table(("NAME", "ROLE", "PID", "ALIVE", "RESTARTS", "UP", "PORTS"), rows,
                title=f"mesh {state.mesh}: {state.status}")
    if state.error:
        error(state.error)
    try:
        with connect(control_url or state.control_url, root) as client:
            proxies = client.proxies()
    except ControlError as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    if proxies:
        print_table(PROXY_HEADERS, proxy_rows(proxies), title="proxies")
    else:
        say("no proxies connected")


def run(
    command: Annotated[list[str], typer.Argument(help="Command to run (after --)")],
    service: Annotated[str, typer.Option("--service", help="Service name of this process")],
    port: Annotated[int | None, typer.Option(
        "--port", min=1, max=65535, show_default=False,
        help="Port the command listens on (PORT); without it the job is client-only: it "
        "calls the mesh and serves nothing")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", help="Processes serving the sidecar's data path (1 .. 4 per CPU)")] = 1,
    namespace: Annotated[str, typer.Option("--namespace", "-n")] = "default",
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="k=v")] = None,
    upstream: Annotated[list[str] | None, typer.Option(
        "--upstream", help="SERVICE=PORT: the sidecar listens on 127.0.0.1:PORT and relays "
        "TCP to SERVICE (repeatable)")] = None,
    stream_addr: Annotated[str | None, typer.Option(
        "--stream-addr", help="Control plane stream address [default: the local mesh's]",
        show_default=False)] = None,
    control_url: ControlUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Run a command beside a sidecar joined to a running mesh; exit with its exit code.

    A dead sidecar is restarted on the same ports; if it keeps failing, `run` exits 1."""
    problem = workers_problem(workers)
    if problem is not None:
        error(f"--workers: {problem}")
        raise typer.Exit(2)
    labels: dict[str, str] = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            error(f"--label: expected k=v, got {item!r}")
            raise typer.Exit(2)
        labels[key] = value
    upstreams: list[tuple[str, int]] = []
    for item in upstream or []:
        try:
            if not item.partition("=")[2].strip().isdigit():
                raise ValueError(item)
            (parsed,) = parse_upstreams(item, what="--upstream")
            if parsed.address.port == 0:
                raise ValueError(item)
        except ValueError:  # SettingsError included
            error(f"--upstream: expected SERVICE=PORT, got {item!r}")
            raise typer.Exit(2) from None
        upstreams.append((parsed.service, parsed.address.port))
    root = data_dir_of(data_dir)
    spec = JoinSpec(service=service, app_port=port, command=tuple(command),
                    namespace=namespace, labels=labels, upstreams=tuple(upstreams),
                    workers=workers)
    with expected_errors(), connect(control_url, root) as client:
        code = run_joined(spec, client=client, data_dir=root,
                          stream_addr=stream_addr_of(stream_addr, root), log=_log)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command(context_settings={"allow_interspersed_args": False})(run)
