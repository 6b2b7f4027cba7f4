"""The storefront story, end to end: `gossamer up --detach`, traffic through the mesh, `down`.

Runs the real CLI as subprocesses with a temporary data dir and a copy of the example mesh
file on free ports. Every PID the mesh records is killed in teardown if the test failed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from bench.procs import free_port

from tests.oidc import running_oidc_provider

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "storefront" / "mesh.yaml"
SERVICES = {"frontend", "catalog", "orders", "payments", "ingress"}


def _free_ports(count: int) -> list[int]:
    return [free_port() for _ in range(count)]


def _start_time(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


@dataclass
class Mesh:
    data_dir: Path
    mesh_file: Path
    ingress_port: int
    env: dict[str, str]
    recorded: dict[int, int | None]  # pid → start time, every process the mesh ever had

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gossamer.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.data_dir / "run" / "mesh.json").read_text())
        self.recorded[data["supervisor_pid"]] = data["supervisor_start_time"]
        for child in data["children"]:
            self.recorded[child["pid"]] = child["start_time"]
        return data

    def alive(self) -> list[int]:
        return [pid for pid, start in self.recorded.items()
                if start is not None and _start_time(pid) == start]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("storefront")
    api, stream, ingress = _free_ports(3)
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    docs[0]["spec"]["controlPlane"] = {"apiPort": api, "streamPort": stream}
    docs[0]["spec"]["ingress"]["port"] = ingress
    mesh_file = root / "mesh.yaml"
    mesh_file.write_text(yaml.safe_dump_all(docs))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GOSSAMER_") and k.lower() not in ("http_proxy", "no_proxy")}
    env["GOSSAMER_DATA_DIR"] = str(root / "data")
    running = Mesh(root / "data", mesh_file, ingress, env, {})
    try:
        result = running.cli("up", "-f", str(mesh_file), "--detach", timeout=100)
        if (running.data_dir / "run" / "mesh.json").exists():
            running.state()
        assert result.returncode == 0, result.stdout + result.stderr
        yield running
    finally:
        if running.data_dir.joinpath("run", "mesh.json").exists():
            running.state()
            running.cli("down", timeout=30)
        for pid in running.alive():
            os.kill(pid, signal.SIGKILL)


def _get_page(mesh: Mesh) -> httpx.Response:
    """The ingress page, retried briefly while the first on-demand discovery settles."""
    deadline = time.monotonic() + 15
    with httpx.Client(trust_env=False, timeout=10) as client:
        while True:
            response = client.get(f"http://127.0.0.1:{mesh.ingress_port}/")
            if response.status_code == 200 and "x-demo-degraded" not in response.headers:
                return response
            if time.monotonic() > deadline:
                return response
            time.sleep(0.3)


def test_up_records_every_process_as_ready(mesh: Mesh) -> None:
    """The state file lists control plane, 6 sidecars, 6 apps (catalog v1 twice and its v2
    canary once) and the ingress, all alive."""
    state = mesh.state()
    assert state["status"] == "ready"
    roles = [child["role"] for child in state["children"]]
    assert roles.count("sidecar") == 6 and roles.count("app") == 6
    assert roles.count("ingress") == 1 and roles.count("control-plane") == 1
    assert len(mesh.alive()) == 15


def test_ingress_page_has_catalog_orders_and_payments(mesh: Mesh) -> None:
    """GET / through the ingress gateway assembles all three services."""
    response = _get_page(mesh)
    assert response.status_code == 200, response.text
    page = response.text
    assert "Spider-silk scarf" in page  # catalog
    assert "ord-1001" in page  # orders
    assert "accepting payments" in page  # payments, called by orders
    assert "spiffe://gossamer.local/ns/default/sa/frontend" in page  # identity seen by catalog


def test_frontend_sidecar_counts_outbound_requests(mesh: Mesh) -> None:
    """The frontend sidecar's /metrics has outbound request lines to catalog and orders."""
    _get_page(mesh)
    admin = next(c["admin_address"] for c in mesh.state()["children"]
                 if c["name"] == "frontend-0-proxy")
    metrics = httpx.get(f"http://{admin}/metrics", trust_env=False, timeout=5).text
    outbound = [line for line in metrics.splitlines()
                if not line.startswith("#") and 'direction="outbound"' in line]
    assert any('dst_service="catalog"' in line for line in outbound), metrics
    assert any('dst_service="orders"' in line for line in outbound), metrics


def test_get_proxies_lists_every_sidecar_acked(mesh: Mesh) -> None:
    """`gossamer get proxies -o json`: seven proxies (catalog three times), every one ACK."""
    deadline = time.monotonic() + 15
    while True:
        result = mesh.cli("get", "proxies", "-o", "json")
        assert result.returncode == 0, result.stderr
        items = json.loads(result.stdout)["items"]
        if all(item["ack_state"] == "ACK" for item in items) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert sorted(item["service"] for item in items) == sorted([*SERVICES, "catalog", "catalog"])
    assert [item["ack_state"] for item in items] == ["ACK"] * 7
    admins = {c["admin_address"] for c in mesh.state()["children"] if c["admin_address"]}
    assert {item["admin_address"] for item in items} == admins


def test_status_shows_processes_and_proxies(mesh: Mesh) -> None:
    """`gossamer status` lists the processes as alive and the connected proxies."""
    result = mesh.cli("status")
    assert result.returncode == 0, result.stderr
    assert "mesh storefront: ready" in result.stdout
    assert " NO " not in result.stdout
    assert "spiffe://gossamer.local/ns/default/sa/catalog" in result.stdout


def test_run_joins_a_batch_job_and_returns_its_exit_code(mesh: Mesh) -> None:
    """`gossamer run` gives a command a sidecar: it reaches catalog by name; its code is kept."""
    job = mesh.data_dir.parent / "job.py"
    job.write_text(
        "import json, urllib.request\n"
        "data = json.load(urllib.request.urlopen('http://catalog/items', timeout=5))\n"
        "print('caller', data['caller_identity'])\n"
        "raise SystemExit(3)\n"
    )
    result = mesh.cli("run", "--service", "batch", "--port", str(_free_ports(1)[0]), "--",
                      sys.executable, str(job))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "caller spiffe://gossamer.local/ns/default/sa/batch" in result.stdout


def test_crashed_app_is_restarted(mesh: Mesh) -> None:
    """An app killed from outside is started again by the supervisor and recorded."""
    before = next(c for c in mesh.state()["children"] if c["name"] == "catalog-0")
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        after = next(c for c in mesh.state()["children"] if c["name"] == "catalog-0")
        if after["pid"] != before["pid"] and _start_time(after["pid"]) == after["start_time"]:
            break
        time.sleep(0.2)
    assert after["pid"] != before["pid"]
    assert after["restarts"] == before["restarts"] + 1
    assert after["last_exit"] == -signal.SIGKILL


def test_the_readmes_canary_commands_do_what_it_says(mesh: Mesh) -> None:
    """Issue 12, item 7: the README's canary tour, as written (ports aside): after `gossamer
    apply -f examples/traffic/canary.yaml`, a page asked for with `x-canary: 1` is served by
    catalog v2, and about one page in ten without it; `gossamer delete httproute
    catalog-canary` ends it."""
    import re

    def catalog_of(page: str) -> str:
        found = re.search(r"answered by (catalog[-a-z0-9]*)", page)
        assert found, page[:300]
        return found.group(1)

    _get_page(mesh)
    applied = mesh.cli("apply", "-f", str(REPO / "examples" / "traffic" / "canary.yaml"))
    assert applied.returncode == 0, applied.stderr
    assert "httproute/catalog-canary created" in applied.stdout
    url = f"http://127.0.0.1:{mesh.ingress_port}/"
    try:
        with httpx.Client(trust_env=False, timeout=10) as client:
            deadline = time.monotonic() + 10
            while True:  # the route reaches the frontend's sidecar within a push
                tester = catalog_of(client.get(url, headers={"x-canary": "1"}).text)
                if tester == "catalog-v2-0" or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert tester == "catalog-v2-0"
            assert all(catalog_of(client.get(url, headers={"x-canary": "1"}).text)
                       == "catalog-v2-0" for _ in range(5))  # fmt: skip
            served = [catalog_of(client.get(url).text) for _ in range(100)]
        canary = served.count("catalog-v2-0")
        assert 1 <= canary <= 30, served  # 10% by weight
    finally:
        deleted = mesh.cli("delete", "httproute", "catalog-canary")
    assert deleted.returncode == 0, deleted.stderr


def test_story_1_the_orders_api_moves_to_another_identity_provider(
    mesh: Mesh, tmp_path: Path
) -> None:
    """Story 1 on the demo, with a real OpenID provider: the README's orders-tokens.yaml (its
    issuers pointed at the provider's) makes the orders API take only tokens with the
    orders-reader role (the storefront's own pages still read it); one apply of the B file
    moves it to issuer B: A's tokens refused, B's accepted; no app restarted."""
    examples = REPO / "examples" / "security"
    with running_oidc_provider(tmp_path / "idp") as idp:
        files = {}
        for name, port, issuer in (("a", "9001", idp.issuer_a), ("b", "9002", idp.issuer_b)):
            source = examples / ("orders-tokens.yaml" if name == "a" else "orders-tokens-b.yaml")
            files[name] = tmp_path / f"{name}.yaml"
            files[name].write_text(source.read_text().replace(f"http://127.0.0.1:{port}", issuer))
        pids = {c["name"]: c["pid"] for c in mesh.state()["children"]}

        def orders(token: str | None) -> int:
            """GET http://orders/orders/recent from a job joined with `gossamer run`, with
            the token (as the walkthrough does): the status curl saw."""
            auth = ["-H", f"Authorization: Bearer {token}"] if token else []
            done = mesh.cli("run", "--service", "batch", "--", "curl", "-s", "-o", "/dev/null",
                            "-w", "%{http_code}", *auth, "http://orders/orders/recent")  # fmt: skip
            assert done.returncode == 0, done.stderr
            return int(done.stdout.strip()[-3:])

        def until(check: Any, what: str) -> None:
            deadline = time.monotonic() + 30
            while not check():
                assert time.monotonic() < deadline, what
                time.sleep(0.5)

        a, b = idp.token(idp.issuer_a), idp.token(idp.issuer_b)
        assert mesh.cli("apply", "-f", str(files["a"])).returncode == 0
        try:
            until(lambda: orders(a) == 200, "a token from A accepted")
            assert orders(None) == 403
            assert orders(idp.token(idp.issuer_a, client="intruder")) == 403
            assert "ord-1001" in _get_page(mesh).text
            assert mesh.cli("apply", "-f", str(files["b"])).returncode == 0
            until(lambda: orders(a) == 401, "A refused once the mesh takes B")
            assert orders(b) == 200
            assert "ord-1001" in _get_page(mesh).text
        finally:
            mesh.cli("delete", "authorizationpolicy", "orders-api")
            mesh.cli("delete", "requestauthentication", "orders-tokens")
        assert {c["name"]: c["pid"] for c in mesh.state()["children"]} == pids


def test_story_2_the_root_rotates_under_load_and_no_request_fails(mesh: Mesh) -> None:
    """Story 2 on the demo: `gossamer certs rotate` while the storefront page is loaded
    (ingress -> frontend -> catalog, orders -> payments over mTLS) from two threads; every
    page is whole, `certs status` then shows the new root alone, and no process restarted."""
    pids = {c["name"]: c["pid"] for c in mesh.state()["children"]}
    before = json.loads(mesh.cli("certs", "status", "-o", "json").stdout)["roots"]
    results: list[str] = []
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 60  # bounded whatever happens
        with httpx.Client(trust_env=False, timeout=10) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    page = client.get(f"http://127.0.0.1:{mesh.ingress_port}/")
                    whole = page.status_code == 200 and "x-demo-degraded" not in page.headers
                    results.append("ok" if whole else f"{page.status_code} "
                                   f"{page.headers.get('x-demo-degraded', '')}")  # fmt: skip
                except httpx.HTTPError as exc:
                    results.append(type(exc).__name__)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        rotated = mesh.cli("certs", "rotate", "--timeout", "60", timeout=90)
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(70)
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert "root rotation done" in rotated.stdout
    failed = [r for r in results if r != "ok"]
    assert not failed and len(results) > 20, (len(results), failed[:5])
    after = json.loads(mesh.cli("certs", "status", "-o", "json").stdout)
    assert len(after["roots"]) == 1 and after["roots"][0]["serial"] != before[0]["serial"]
    assert {p["signed_by"] for p in after["proxies"] if p["connected"]} == {
        after["rotation"]["last"]["new_root"]["key_id"]}  # fmt: skip
    assert {c["name"]: c["pid"] for c in mesh.state()["children"]} == pids


TREE = [  # (depth, service, kind, name) of each span of the page's trace, parents first
    (0, "ingress", "CLIENT", "GET frontend"),
    (1, "frontend", "SERVER", "GET frontend"),
    (2, "frontend", "CLIENT", "GET catalog"),
    (3, "catalog", "SERVER", "GET catalog"),
    (2, "frontend", "CLIENT", "GET orders"),
    (3, "orders", "SERVER", "GET orders"),
    (4, "orders", "CLIENT", "GET payments"),
    (5, "payments", "SERVER", "GET payments"),
]


def _trees(text: str) -> list[list[tuple[int, str, str, str]]]:
    """The traces examples/tracing/print_traces.py printed, as (depth, service, kind, name)."""
    trees = []
    for block in text.split("\ntrace ")[1:]:
        rows = []
        for line in block.splitlines()[1:]:
            if "─ " not in line:
                continue
            prefix, _, rest = line.partition("─ ")
            service, kind, method, name = rest.split()[:4]
            rows.append(((len(prefix) - 1) // 3, service, kind, f"{method} {name}"))
        trees.append(rows)
    return trees


def test_the_storefront_page_is_one_trace_tree(mesh: Mesh, tmp_path: Path) -> None:
    """The README's tracing tour: the example receiver, the example MeshConfig pointed at it,
    one page: ingress -> frontend -> catalog, orders -> payments, as one tree (the demo apps
    pass the trace headers on, as any app in a mesh does)."""
    port = _free_ports(1)[0]
    out = tmp_path / "traces.txt"
    config = tmp_path / "tracing.yaml"
    config.write_text((REPO / "examples" / "tracing" / "tracing.yaml").read_text()
                      .replace("127.0.0.1:4318", f"127.0.0.1:{port}"))  # fmt: skip
    with open(out, "wb") as sink:
        receiver = subprocess.Popen(
            [sys.executable, str(REPO / "examples" / "tracing" / "print_traces.py"),
             "--port", str(port)], stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        assert mesh.cli("apply", "-f", str(config)).returncode == 0
        deadline = time.monotonic() + 40
        while TREE not in _trees(out.read_text()):
            assert time.monotonic() < deadline, out.read_text()[-3000:]
            assert _get_page(mesh).status_code == 200
            time.sleep(1.5)
    finally:
        receiver.terminate()
        receiver.wait(10)
        mesh.cli("delete", "meshconfig", "default")


def test_story_3_every_paid_page_has_one_audit_record_through_a_sidecar_kill(
    mesh: Mesh,
) -> None:
    """Story 3 on the demo (docs/walkthrough-audit.md): every call to payments audited; pages
    are loaded with their own request id (the demo apps pass it on to payments) while the
    payments sidecar is SIGKILLed and restarted by the supervisor. Every page whose payments
    part was answered has exactly one record, and the chain verifies intact."""
    applied = mesh.cli("apply", "-f", str(REPO / "examples" / "audit" / "audit-payments.yaml"))
    assert applied.returncode == 0, applied.stderr
    time.sleep(1.0)  # the policy reaches payments' sidecar
    paid: list[str] = []
    counter = iter(range(1, 100_000))
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 40  # bounded whatever happens
        with httpx.Client(trust_env=False, timeout=10) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                rid = f"story3-{next(counter)}"
                try:
                    page = client.get(f"http://127.0.0.1:{mesh.ingress_port}/",
                                      headers={"x-request-id": rid})  # fmt: skip
                except httpx.HTTPError:
                    continue
                if "payments: accepting" in page.text:
                    paid.append(rid)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        sidecar = next(c for c in mesh.state()["children"] if c["name"] == "payments-0-proxy")
        os.kill(sidecar["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # restarted by the supervisor
            after = next(c for c in mesh.state()["children"] if c["name"] == "payments-0-proxy")
            if after["pid"] != sidecar["pid"] and _start_time(after["pid"]) == after["start_time"]:
                break
            time.sleep(0.2)
        time.sleep(3.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(50)
    assert len(paid) > 50
    deadline = time.monotonic() + 30
    while True:
        query = mesh.cli("audit", "query", "--service", "payments", "--limit", "10000",
                         "-o", "json")  # fmt: skip
        assert query.returncode == 0, query.stderr
        ids = [r["request_id"] for r in json.loads(query.stdout)["items"]]
        if set(paid) <= set(ids) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    missing = sorted(set(paid) - set(ids))
    assert not missing, missing[:5]
    assert len(ids) == len(set(ids))  # none twice
    verified = mesh.cli("audit", "verify")
    assert verified.returncode == 0 and "intact" in verified.stdout, verified.stdout
    assert mesh.cli("delete", "authorizationpolicy", "audit-payments").returncode == 0


def test_down_stops_every_process(mesh: Mesh) -> None:
    """`gossamer down` ends every recorded PID and removes the state (keep this test last)."""
    mesh.state()
    result = mesh.cli("down", timeout=30)
    assert result.returncode == 0, result.stderr
    assert "mesh stopped" in result.stdout
    assert mesh.alive() == []
    assert not (mesh.data_dir / "run" / "mesh.json").exists()
    again = mesh.cli("down")
    assert again.returncode == 0 and "no mesh running" in again.stdout

