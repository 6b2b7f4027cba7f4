"""``gossamer run`` (``local/join.run_joined``) with a stand-in sidecar: a small script that
answers /ready on its admin port and records the ``GOSSAMER_PROXY_*`` settings it was given.

Issue 12: a client-only job needs no ``--port`` (item 5), a dead sidecar is restarted with a
fresh join token on the same ports and repeated fast failures end the run (item 4), and the
sidecar's workers can be set (item 8).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gossamer.local import join
from gossamer.local.join import JoinSpec, run_joined
from gossamer.local.runner import StartupError

FAKE_SIDECAR = """
import http.server, json, os, sys, threading
record = os.environ["FAKE_SIDECAR_RECORD"]
mode = os.environ.get("FAKE_SIDECAR_MODE", "stay")
settings = {k: v for k, v in os.environ.items() if k.startswith("GOSSAMER_PROXY_")}
with open(record, "a") as out:
    out.write(json.dumps({"pid": os.getpid(), "env": settings}) + "\\n")
with open(record) as f:
    incarnation = len(f.readlines())
if mode == "die-always" and incarnation > 1:
    sys.exit(3)
host, port = os.environ["GOSSAMER_PROXY_ADMIN_ADDR"].rsplit(":", 1)

class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = http.server.HTTPServer((host, int(port)), Ready)
if mode != "stay" and incarnation == 1:
    threading.Timer(1.5, lambda: os._exit(7)).start()
server.serve_forever()
"""

# The command: write its environment, then wait (bounded) until the sidecar's second
# incarnation answers /ready; exit 0 then, 1 on time-out.
WAIT_FOR_RESTART = """
import json, os, sys, time, urllib.request
record, out = sys.argv[1], sys.argv[2]
with open(out, "w") as f:
    json.dump({"pid": os.getpid(), "env": dict(os.environ)}, f)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    with open(record) as f:
        lines = f.readlines()
    if len(lines) >= 2:
        admin = json.loads(lines[-1])["env"]["GOSSAMER_PROXY_ADMIN_ADDR"]
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            if opener.open(f"http://{admin}/ready", timeout=1).status == 200:
                sys.exit(0)
        except OSError:
            pass
    time.sleep(0.1)
sys.exit(1)
"""


class TokenClient:
    """Stands for the API client: hands out numbered join tokens."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def join_token(self, service: str, namespace: str = "default") -> str:
        self.tokens.append(f"tok-{len(self.tokens) + 1}")
        return self.tokens[-1]


class Run:
    """One ``run_joined`` call with the stand-in sidecar; what it logged and recorded."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
        self.tmp = tmp
        self.record = tmp / "sidecars.jsonl"
        self.record.touch()
        self.command_out = tmp / "command.json"
        script = tmp / "fake_sidecar.py"
        script.write_text(FAKE_SIDECAR)
        root = tmp / "root.crt"
        root.write_text("pem")
        monkeypatch.setenv("GOSSAMER_CA_FILE", str(root))
        monkeypatch.setattr(join, "sidecar_argv", lambda: [sys.executable, str(script)])
        self.env = {"PATH": os.environ.get("PATH", ""), "FAKE_SIDECAR_RECORD": str(self.record),
                    "FAKE_SIDECAR_MODE": mode}
        self.client = TokenClient()
        self.lines: list[str] = []

    def __call__(self, spec: JoinSpec) -> int:
        return run_joined(
            spec, client=self.client, data_dir=self.tmp / "data",  # type: ignore[arg-type]
            stream_addr="127.0.0.1:1", log=self.lines.append, parent_env=self.env,
        )  # fmt: skip

    def sidecars(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def command(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.command_out.read_text())
        return result

    def waiting_command(self, seconds: float) -> tuple[str, ...]:
        script = self.tmp / "command.py"
        script.write_text(WAIT_FOR_RESTART)
        return (sys.executable, str(script), str(self.record), str(self.command_out),
                str(seconds))


def _gone(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return text.rpartition(")")[2].split()[0] in ("Z", "X")


def test_a_client_only_job_needs_no_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 5: without an app port the sidecar has no app and no inbound listener (it is no
    endpoint of its service), and the command gets HTTP_PROXY but no PORT."""
    run = Run(tmp_path, monkeypatch, "stay")
    code = run(JoinSpec(service="batch", command=run.waiting_command(0.0)))
    assert code == 1  # the command gave up waiting for a restart at once: its own code
    (sidecar,) = run.sidecars()
    assert "GOSSAMER_PROXY_APP_ADDR" not in sidecar["env"]
    assert sidecar["env"]["GOSSAMER_PROXY_INBOUND_ADDR"] == "off"
    assert sidecar["env"]["GOSSAMER_PROXY_OUTBOUND_ADDR"].startswith("127.0.0.1:")
    command = run.command()["env"]
    assert "PORT" not in command
    assert command["HTTP_PROXY"] == "http://" + sidecar["env"]["GOSSAMER_PROXY_OUTBOUND_ADDR"]
    assert _gone(sidecar["pid"])


def test_workers_reach_the_sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 8: ``run --workers 3`` becomes GOSSAMER_PROXY_WORKERS=3 for the sidecar."""
    run = Run(tmp_path, monkeypatch, "stay")
    run(JoinSpec(service="batch", app_port=4999, command=run.waiting_command(0.0), workers=3))
    (sidecar,) = run.sidecars()
    assert sidecar["env"]["GOSSAMER_PROXY_WORKERS"] == "3"
    assert sidecar["env"]["GOSSAMER_PROXY_APP_ADDR"] == "127.0.0.1:4999"


def test_a_dead_sidecar_is_restarted_with_a_fresh_token_on_the_same_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 4: the sidecar dies under a running command; ``run`` says so, starts a new one
    with a new join token and the same ports (HTTP_PROXY stays right), and the command goes
    on to finish with its own exit code."""
    run = Run(tmp_path, monkeypatch, "die-once")
    code = run(JoinSpec(service="batch", app_port=4998, command=run.waiting_command(20.0)))
    assert code == 0, run.lines
    first, second = run.sidecars()
    assert run.client.tokens == ["tok-1", "tok-2"]
    assert first["env"]["GOSSAMER_PROXY_JOIN_TOKEN"] == "tok-1"
    assert second["env"]["GOSSAMER_PROXY_JOIN_TOKEN"] == "tok-2"
    for name in ("ADMIN_ADDR", "OUTBOUND_ADDR", "INBOUND_ADDR", "APP_ADDR", "WORKDIR"):
        assert first["env"]["GOSSAMER_PROXY_" + name] == second["env"]["GOSSAMER_PROXY_" + name]
    assert run.command()["env"]["HTTP_PROXY"].endswith(first["env"]["GOSSAMER_PROXY_OUTBOUND_ADDR"])
    text = "\n".join(run.lines)
    assert f"(pid {first['pid']}) exited with code 7; restarting" in text, text
    assert f"restarted (pid {second['pid']}" in text, text
    assert _gone(second["pid"])


def test_repeated_fast_failures_end_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 4: a sidecar that keeps dying right after its start is given up on: the command
    is stopped and ``run`` fails with a message that says why and where the log is."""
    monkeypatch.setattr(join, "RESTART_POLICY", join.RestartPolicy(
        backoff=0.1, max_backoff=0.4, fast_failure=10.0, max_fast_failures=3))
    run = Run(tmp_path, monkeypatch, "die-always")
    started = time.monotonic()
    with pytest.raises(StartupError) as failed:
        run(JoinSpec(service="batch", command=run.waiting_command(30.0)))
    assert time.monotonic() - started < 20
    message = str(failed.value)
    assert "giving up" in message and "3 times" in message, message
    assert "batch-run-" in message and "-proxy.log" in message, message
    assert len(run.sidecars()) == 3
    assert _gone(run.command()["pid"])
    assert any("restarting" in line for line in run.lines), run.lines
