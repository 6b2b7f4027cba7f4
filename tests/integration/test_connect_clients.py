"""Clients nobody here wrote, unchanged, through `gossamer run` (issue 15).

A control plane, a gRPC service ``greeter`` (grpcio server, port declared ``grpc``, a retry
policy on ``unavailable``), an HTTP service ``catalog``, and an HTTPS server outside the mesh
(``payments.example.com``, with a certificate from its own CA, reached through an ``Egress``
whose endpoint is its loopback address). One `gossamer run --service shop -- python driver.py`
starts each client below as a child of the command, with the environment `run` gave it and
no option that knows about the mesh, and records what it printed:

- grpcio: ``grpc.insecure_channel("greeter:80")``: unary, server streaming, a deadline, and
  calls the app fails half the time (UNAVAILABLE), made whole by the retry policy;
- ``@grpc/grpc-js`` on Node.js (``tests/clients/node``), the same way;
- curl to ``http://catalog/items`` and to ``https://payments.example.com/quote``;
- Python ``requests`` and ``urllib`` to both.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gossamer.control.ca import CertificateAuthority
from gossamer.identity.spiffe import SpiffeId
from tests.integration.control_helpers import running_control_plane
from tests.process_harness import ROOT, Processes, wait_port, wait_ready
from tests.sidecar_harness import free_port
from tests.tools import require

API = "gossamer.dev/v1alpha1"
NODE_CLIENT = ROOT / "tests/clients/node/grpc_client.js"
PARTNER = "payments.example.com"

GRPCIO_CLIENT = """
import json, grpc
out = {}
with grpc.insecure_channel("greeter:80") as channel:
    meta = json.loads(channel.unary_unary("/test.Echo/Meta")(b"", timeout=10))
    out["peer"] = meta["metadata"].get("x-gossamer-peer-identity")
    out["stream"] = [m.decode() for m in channel.unary_stream("/test.Echo/Count")(b"5", timeout=10)]
    try:
        channel.unary_unary("/test.Echo/Slow")(b"5", timeout=0.5)
        out["deadline"] = "no error"
    except grpc.RpcError as exc:
        out["deadline"] = exc.code().name
    flaky = channel.unary_unary("/test.Echo/Flaky")
    out["flaky"] = [int(flaky(b"", timeout=10)) for _ in range(3)]
print(json.dumps(out))
"""

PYTHON_CLIENTS = """
import json, sys, urllib.request, requests
ca = sys.argv[1]
print(json.dumps({
    "requests_http": requests.get("http://catalog/items", timeout=10).json()["peer"],
    "requests_https": requests.get("https://payments.example.com/quote", verify=ca,
                                   timeout=10).text,
    "urllib_http": json.load(urllib.request.urlopen("http://catalog/items", timeout=10))["peer"],
    "urllib_https": urllib.request.urlopen(
        "https://payments.example.com/quote", timeout=10,
        context=__import__("ssl").create_default_context(cafile=ca)).read().decode(),
}))
"""

# Runs each client as a child (inheriting the environment `gossamer run` set up) and writes
# what each printed, its exit code and its stderr to the JSON file named by argv[1].
DRIVER = """
import json, subprocess, sys
out, clients = sys.argv[1], json.loads(sys.argv[2])
results = {}
for name, argv in clients.items():
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=90)
        results[name] = {"code": done.returncode, "out": done.stdout, "err": done.stderr[-3000:]}
    except subprocess.TimeoutExpired as exc:
        results[name] = {"code": -1, "out": str(exc.stdout), "err": "timed out"}
with open(out, "w") as f:
    json.dump(results, f)
"""


def _partner_server(tmp: Path) -> tuple[http.server.ThreadingHTTPServer, int, Path]:
    """An HTTPS server for payments.example.com on loopback, its certificate from a CA of its
    own (not the mesh's): the host outside the mesh."""
    ca = CertificateAuthority.load_or_create(tmp / "partner-ca")
    cert, key = ca.issue_keypair(SpiffeId("partner.example", "default", "payments"),
                                 timedelta(hours=1), dns_names=[PARTNER])  # fmt: skip
    (tmp / "partner.crt").write_bytes(cert)
    (tmp / "partner.key").write_bytes(key)
    (tmp / "partner-ca.pem").write_bytes(ca.root_pem)

    class Quote(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"quote for {self.headers.get('host')}{self.path}".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quote)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "partner.crt", tmp / "partner.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1], tmp / "partner-ca.pem"


def _resources(partner_port: int) -> list[dict[str, Any]]:
    def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": spec}

    return [
        doc("Service", "greeter", {"ports": [{"port": 80, "protocol": "grpc"}]}),
        doc("Service", "catalog", {"ports": [{"port": 80, "protocol": "http"}]}),
        doc("TrafficPolicy", "greeter", {"service": "greeter", "retry": {
            "attempts": 3, "on": ["unavailable"], "backoff": {"baseInterval": "5ms"}}}),
        doc("MeshConfig", "default", {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
        doc("Egress", "payments", {"hosts": [PARTNER], "ports": [443],
                                   "endpoints": [{"address": "127.0.0.1", "port": partner_port}]}),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """Every client's output, from one `gossamer run` against the mesh described above."""
    require(shutil.which("curl") is not None, "curl")
    require(shutil.which("node") is not None and (NODE_CLIENT.parent / "node_modules").is_dir(),
            "Node.js and @grpc/grpc-js (scripts/ensure-node-clients)")  # fmt: skip
    tmp = tmp_path_factory.mktemp("clients")
    partner, partner_port, partner_ca = _partner_server(tmp)
    with running_control_plane(tmp / "cp") as cp:
        with cp.client() as api:
            for doc in _resources(partner_port):
                response = api.post("/v1/resources", json=doc)
                assert response.status_code == 200, response.text
        procs = Processes(tmp)
        try:
            greeter_port = free_port()
            procs.spawn("greeter-app", [sys.executable, str(ROOT / "tests/apps/grpc_echo.py"),
                                        str(greeter_port), "greeter-1"])  # fmt: skip
            catalog = procs.app("catalog-app")
            wait_port(greeter_port)
            wait_port(catalog.ports["app"])
            for sidecar in (procs.sidecar(cp, "greeter-sidecar", "greeter", greeter_port),
                            procs.sidecar(cp, "catalog-sidecar", "catalog",
                                          catalog.ports["app"])):  # fmt: skip
                wait_ready(sidecar)
            yield _run_clients(tmp, cp, partner_ca)
        finally:
            procs.stop_all()
            partner.shutdown()


def _run_clients(tmp: Path, cp: Any, partner_ca: Path) -> dict[str, dict[str, Any]]:
    (tmp / "grpcio_client.py").write_text(GRPCIO_CLIENT)
    (tmp / "python_clients.py").write_text(PYTHON_CLIENTS)
    (tmp / "driver.py").write_text(DRIVER)
    clients = {
        "grpcio": [sys.executable, str(tmp / "grpcio_client.py")],
        "grpc-js": ["node", str(NODE_CLIENT), "greeter:80", "/test.Echo/Meta", "3"],
        "grpc-js-stream": ["node", str(NODE_CLIENT), "greeter:80", "/test.Echo/Count", "1",
                           "--stream", "--request=4"],
        "curl-http": ["curl", "-sS", "--max-time", "20", "http://catalog/items"],
        "curl-https": ["curl", "-sS", "--max-time", "20", "--cacert", str(partner_ca),
                       f"https://{PARTNER}/quote"],
        "python": [sys.executable, str(tmp / "python_clients.py"), str(partner_ca)],
    }
    out = tmp / "results.json"
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOSSAMER_CA_FILE", "GOSSAMER_TOKEN", "GOSSAMER_DATA_DIR",
                        "GOSSAMER_CONTROL_URL")}  # fmt: skip
    argv = [sys.executable, "-m", "gossamer.cli", "run", "--service", "shop",
            "--data-dir", str(cp.data_dir), "--control-url", cp.api_url,
            "--stream-addr", f"{cp.stream_host}:{cp.stream_port}",
            "--", sys.executable, str(tmp / "driver.py"), str(out), json.dumps(clients)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=400,
                          check=False)  # fmt: skip
    assert done.returncode == 0 and out.exists(), done.stderr[-5000:]
    found: dict[str, dict[str, Any]] = json.loads(out.read_text())
    return found


SHOP = "spiffe://gossamer.local/ns/default/sa/shop"


def _ok(results: dict[str, dict[str, Any]], name: str) -> str:
    result = results[name]
    assert result["code"] == 0, result
    out: str = result["out"]
    return out


def test_grpcio_unary_streaming_deadlines_and_retries(results: dict[str, dict[str, Any]]) -> None:
    """The mesh's identity reaches the app, a stream arrives whole, a deadline is kept, and
    the app's UNAVAILABLE answers (every odd call) are retried by the policy: each call
    returned an even call number."""
    got = json.loads(_ok(results, "grpcio"))
    assert got["peer"] == SHOP
    assert got["stream"] == [f"item{i}" for i in range(5)]
    assert got["deadline"] == "DEADLINE_EXCEEDED"
    assert len(got["flaky"]) == 3 and all(n % 2 == 0 for n in got["flaky"]), got["flaky"]


def test_grpc_js_from_node(results: dict[str, dict[str, Any]]) -> None:
    lines = [json.loads(line) for line in _ok(results, "grpc-js").splitlines()]
    assert len(lines) == 3 and all(line["ok"] for line in lines), lines
    for line in lines:
        metadata = json.loads(line["reply"])["metadata"]
        assert metadata["x-gossamer-peer-identity"] == SHOP
        assert metadata["user-agent"].startswith("grpc-node-js/")
    (stream,) = [json.loads(line) for line in _ok(results, "grpc-js-stream").splitlines()]
    assert stream["ok"] and stream["messages"] == [f"item{i}" for i in range(4)], stream


def test_curl_to_a_mesh_service_and_to_an_https_host_outside(
    results: dict[str, dict[str, Any]],
) -> None:
    assert json.loads(_ok(results, "curl-http"))["peer"] == SHOP
    assert _ok(results, "curl-https") == f"quote for {PARTNER}/quote"


def test_python_requests_and_urllib(results: dict[str, dict[str, Any]]) -> None:
    got = json.loads(_ok(results, "python"))
    assert got["requests_http"] == got["urllib_http"] == SHOP
    assert got["requests_https"] == got["urllib_https"] == f"quote for {PARTNER}/quote"
