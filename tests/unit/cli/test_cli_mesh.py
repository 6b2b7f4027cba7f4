"""`gossamer up / down / status / run` without a real mesh: refusals and clean-up."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gossamer.cli.app import app
from gossamer.local.procs import ProcessRef, is_running, proc_start_time, spawn
from gossamer.local.state import ChildRecord, MeshState, read_state, write_state

runner = CliRunner()

MESH = """
apiVersion: gossamer.dev/v1alpha1
kind: Mesh
metadata: {name: shop}
spec:
  controlPlane: {apiPort: API, streamPort: STREAM}
  services:
    - name: web
      command: ["{python}", "-c", "pass"]
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GOSSAMER_DATA_DIR", "GOSSAMER_CONTROL_URL", "GOSSAMER_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_down_without_a_mesh_is_fine(tmp_path: Path) -> None:
    """No state file: `down` says so and exits 0."""
    result = runner.invoke(app, ["down", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert result.stdout.strip() == "no mesh running"


def test_status_without_a_mesh(tmp_path: Path) -> None:
    """No state file: `status` says so."""
    result = runner.invoke(app, ["status", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert "no mesh running" in result.stdout


def test_down_kills_leftovers_of_a_dead_supervisor(tmp_path: Path) -> None:
    """A recorded child whose supervisor is gone is stopped and the state removed."""
    child = spawn([sys.executable, "-c", "import time; time.sleep(60)"], env={},
                  log_path=tmp_path / "child.log", die_with_parent=False)
    try:
        ref = ProcessRef(child.pid, proc_start_time(child.pid))
        state = MeshState(
            mesh="shop", status="ready", supervisor_pid=2**22 + 7, supervisor_start_time=1,
            data_dir=str(tmp_path), control_url="http://127.0.0.1:9", stream_addr="x:1",
            children=(ChildRecord(name="web-0", role="app", pid=child.pid,
                                  start_time=ref.start_time, log_path="x", started_at=0.0),),
        )
        write_state(tmp_path / "run" / "mesh.json", state)
        result = runner.invoke(app, ["down", "--data-dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert "mesh stopped: 1 process(es)" in result.stdout
        child.wait(timeout=5)
        assert not is_running(ref)
        assert read_state(tmp_path / "run" / "mesh.json") is None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_down_ignores_a_reused_pid(tmp_path: Path) -> None:
    """A recorded PID with another start time is not ours: it is left alone."""
    state = MeshState(
        mesh="shop", status="ready", supervisor_pid=os.getpid(),
        supervisor_start_time=(proc_start_time(os.getpid()) or 0) + 1, data_dir=str(tmp_path),
        control_url="http://127.0.0.1:9", stream_addr="x:1",
    )
    write_state(tmp_path / "run" / "mesh.json", state)
    result = runner.invoke(app, ["down", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert "no mesh running" in result.stdout  # and this test process is still here


def test_up_refuses_an_invalid_mesh_file(tmp_path: Path) -> None:
    """Validation errors are listed with their paths before anything starts."""
    file = tmp_path / "mesh.yaml"
    file.write_text(MESH.replace("API", "0").replace("STREAM", "15012"))
    result = runner.invoke(app, ["up", "-f", str(file), "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert "spec.controlPlane.apiPort" in result.stderr
    assert not (tmp_path / "d" / "run" / "mesh.json").exists()


def test_up_refuses_a_busy_port(tmp_path: Path) -> None:
    """A configured port already in use is named; nothing is left running or recorded."""
    with socket.socket() as busy, socket.socket() as free:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        free.bind(("127.0.0.1", 0))
        free_port = free.getsockname()[1]
        free.close()
        file = tmp_path / "mesh.yaml"
        file.write_text(MESH.replace("API", str(busy_port))
                        .replace("STREAM", str(free_port)))
        started = time.monotonic()
        result = runner.invoke(app, ["up", "-f", str(file), "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert f"port {busy_port} for the control plane API" in result.stderr
    assert "already in use" in result.stderr and "controlPlane.apiPort" in result.stderr
    assert time.monotonic() - started < 10
    state = read_state(tmp_path / "d" / "run" / "mesh.json")
    assert state is not None and state.status == "failed" and state.children == ()


def test_up_refuses_when_a_mesh_runs_and_keeps_its_state(tmp_path: Path) -> None:
    """A second `up` on the same data dir fails and leaves the running mesh's state alone."""
    data = tmp_path / "d"
    supervisor = spawn([sys.executable, "-c", "import time; time.sleep(60)"], env={},
                       log_path=tmp_path / "supervisor.log", die_with_parent=False)
    try:
        state = MeshState(
            mesh="shop", status="ready", supervisor_pid=supervisor.pid,
            supervisor_start_time=proc_start_time(supervisor.pid), data_dir=str(data),
            control_url="http://127.0.0.1:9", stream_addr="x:1",
        )
        write_state(data / "run" / "mesh.json", state)
        file = tmp_path / "mesh.yaml"
        file.write_text(MESH.replace("API", "15010").replace("STREAM", "15012"))
        result = runner.invoke(app, ["up", "-f", str(file), "--data-dir", str(data)])
        assert result.exit_code == 1
        assert "a mesh is already running" in result.stderr
        assert read_state(data / "run" / "mesh.json") == state
        assert supervisor.poll() is None
    finally:
        supervisor.kill()
        supervisor.wait()


def test_run_rejects_a_malformed_label(tmp_path: Path) -> None:
    """--label must be k=v; usage error exit code 2."""
    result = runner.invoke(app, ["run", "--service", "x", "--port", "1", "--label", "oops",
                                 "--data-dir", str(tmp_path), "--", "true"])
    assert result.exit_code == 2
    assert "--label: expected k=v" in result.stderr


def test_run_without_a_control_plane_fails_clearly(tmp_path: Path) -> None:
    """No control plane: the unreachable message, exit 1, no traceback."""
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "root.crt").write_text("a root from an earlier run\n")
    result = runner.invoke(app, ["run", "--service", "x", "--port", "1", "--control-url",
                                 "http://127.0.0.1:9", "--data-dir", str(tmp_path), "--",
                                 "true"])
    assert result.exit_code == 1
    assert "control plane not reachable at http://127.0.0.1:9" in result.stderr


def test_run_needs_no_port(tmp_path: Path) -> None:
    """Issue 12 item 5: `run` without --port is a client-only job, not a usage error; here it
    gets as far as asking the (absent) control plane for a join token."""
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "root.crt").write_text("a root from an earlier run\n")
    result = runner.invoke(app, ["run", "--service", "x", "--control-url",
                                 "http://127.0.0.1:9", "--data-dir", str(tmp_path), "--",
                                 "true"])
    assert result.exit_code == 1, result.output
    assert "control plane not reachable at http://127.0.0.1:9" in result.stderr


@pytest.mark.parametrize(("workers", "message"), [
    ("0", "--workers: must be at least 1, got 0"),
    ("-1", "--workers: must be at least 1, got -1"),
    ("100000", "--workers: at most "),
    ("two", "Invalid value for '--workers'"),
])
def test_run_refuses_bad_workers(tmp_path: Path, workers: str, message: str) -> None:
    """Issue 12 item 8: --workers is 1 .. 4 per CPU; anything else is a usage error."""
    result = runner.invoke(app, ["run", "--service", "x", "--workers", workers,
                                 "--data-dir", str(tmp_path), "--", "true"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split()), result.stderr


def _busy_and_free() -> tuple[socket.socket, int, int]:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        free_port = free.getsockname()[1]
    return busy, busy.getsockname()[1], free_port


@pytest.mark.parametrize("detach", [False, True])
def test_up_takes_port_overrides(tmp_path: Path, detach: bool) -> None:
    """Issue 12 item 10: --api-port wins over the mesh file (also for the detached
    supervisor); the refusal names the flag the busy port came from."""
    busy, busy_port, free_port = _busy_and_free()
    with busy:
        file = tmp_path / "mesh.yaml"
        file.write_text(MESH.replace("API", str(free_port)).replace("STREAM", "15012"))
        args = ["up", "-f", str(file), "--data-dir", str(tmp_path / "d"),
                "--api-port", str(busy_port), "--stream-port", str(free_port)]
        result = runner.invoke(app, args + (["--detach"] if detach else []))
    assert result.exit_code == 1, result.output
    assert f"port {busy_port} for the control plane API (--api-port)" in result.stderr
    assert "already in use" in result.stderr


@pytest.mark.parametrize(("flags", "message"), [
    (["--api-port", "70000"], "--api-port"),
    (["--stream-port", "0"], "--stream-port"),
    (["--ingress-port", "15012"], "--ingress-port: the mesh file has no ingress"),
    (["--api-port", "15012"], "--api-port: port 15012 is also used by controlPlane.streamPort"),
])
def test_up_checks_port_overrides(tmp_path: Path, flags: list[str], message: str) -> None:
    """Out-of-range ports are usage errors; clashes are refused before anything starts."""
    file = tmp_path / "mesh.yaml"
    file.write_text(MESH.replace("API", "15010").replace("STREAM", "15012"))
    result = runner.invoke(app, ["up", "-f", str(file), "--data-dir", str(tmp_path / "d"),
                                 *flags])
    assert result.exit_code in (1, 2), result.output
    assert message in result.stderr
    assert not (tmp_path / "d" / "run" / "mesh.json").exists()


def test_an_apply_without_an_answer_says_its_outcome_is_unknown(tmp_path: Path) -> None:
    """Issue 12, item 3: the CLI said "not reachable" when a large apply outlasted its
    timeout, although every document was applied. A server that accepts the request and
    never answers: the CLI says the documents were sent, may have been applied, and how to
    check."""
    import socket
    import threading

    from gossamer.local import client as client_module

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    held: list[socket.socket] = []

    def accept() -> None:
        conn, _ = server.accept()
        held.append(conn)  # read nothing, answer nothing

    threading.Thread(target=accept, daemon=True).start()
    doc = tmp_path / "s.yaml"
    doc.write_text("apiVersion: gossamer.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\n")
    original = client_module.APPLY_TIMEOUT
    client_module.APPLY_TIMEOUT = 0.5
    try:
        result = runner.invoke(app, ["apply", "-f", str(doc), "--control-url",
                                     f"http://127.0.0.1:{port}", "--data-dir", str(tmp_path)])
    finally:
        client_module.APPLY_TIMEOUT = original
        for conn in held:
            conn.close()
        server.close()
    assert result.exit_code == 1
    assert "may or may not have been applied" in result.stderr
    assert "gossamer get" in result.stderr


def test_messages_for_bad_input_name_the_problem(tmp_path: Path) -> None:
    """Issue 12, item 9: a file that is not UTF-8 is named with its line (it raised a
    traceback); an unknown kind gets the same answer from `get KIND` and `get KIND NAME`,
    listing the kinds, before any control plane is asked; `gossamer proxy --help` helps."""
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"apiVersion: gossamer.dev/v1alpha1\nkind: Service\n"
                    b"metadata: {name: caf\xe9}\n")
    result = runner.invoke(app, ["apply", "-f", str(bad), "--control-url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "line 3: byte 0xe9 is not UTF-8" in result.stderr
    for args in (["get", "foo"], ["get", "foo", "bar"], ["delete", "foo", "bar"]):
        result = runner.invoke(app, [*args, "--control-url", "http://127.0.0.1:9"])
        assert result.exit_code == 2, args
        assert "unknown kind 'foo'; kinds: authorizationpolicies, egresses, httproutes" in (
            result.stderr
        )
    from gossamer.proxy.process.main import main as proxy_main

    assert proxy_main(["--help"]) == 0
