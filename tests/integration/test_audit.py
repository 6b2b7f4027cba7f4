"""The audit log (issue 14, story 3) with real processes: every audited request has exactly one
record at the control plane, whatever fails in between, and tampering is found.

A control plane, ``orders`` (the whoami app behind its sidecar) and ``web`` (a sidecar with no
app, the caller). An AuthorizationPolicy with action AUDIT selects ``/orders/*`` on orders; a
DENY policy refuses DELETE. Load goes through web's sidecar, each request with its own
``x-request-id``, which the orders sidecar writes into the record: so the test knows which
requests have a record, and how many.

- the story: records with every field, a denied request recorded as such, an unaudited path
  not recorded; ``gossamer audit query`` and ``verify`` as a user runs them; an edited and a
  deleted record found by ``verify``, named where they are;
- the control plane down under load (8 s here; the issue's 60 s runs on demand, ``slow``);
- the orders sidecar SIGKILLed mid-load and started again on its workdir;
- the spool full: ``block`` refuses new audited requests (503 ``audit-unavailable``) and
  records every request it let through; ``drop`` lets them through and the chain says how
  many were dropped; and a real full disk (a 64 KiB tmpfs under the spool, when this test
  may mount one).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.integration.control_helpers import ControlPlaneProcess, start_control_plane
from tests.process_harness import Proc, Processes, wait_port, wait_ready
from tests.sidecar_harness import free_port

RESOURCES = """
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: orders}
spec: {ports: [{port: 80, protocol: http}]}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: web}
spec: {calls: [orders]}
---
apiVersion: gossamer.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: audit-orders}
spec:
  selector: {service: orders}
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/orders/*"]}}]}]
---
apiVersion: gossamer.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-deletes}
spec:
  selector: {service: orders}
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
"""
WEB = "spiffe://gossamer.local/ns/default/sa/web"
ROOT = Path(__file__).resolve().parents[2]
_ids = itertools.count(1)


def mesh_config(spool: str, policy: str) -> str:
    return ("apiVersion: gossamer.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: default}\n"
            f"spec: {{audit: {{spoolSize: {spool}, onSpoolFull: {policy}}}}}\n")  # fmt: skip


@dataclass
class Mesh:
    tmp: Path
    stream_port: int
    cp: ControlPlaneProcess
    procs: Processes
    orders: Proc
    web: Proc
    orders_env: dict[str, str] = field(default_factory=dict)

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.web.ports['outbound']}"

    def restart_control_plane(self) -> None:
        self.cp = start_control_plane(
            self.tmp / "cp", "--stream-addr", f"127.0.0.1:{self.stream_port}"
        )

    def kill_control_plane(self) -> None:
        # The control plane saves the proxies it knows at most once a second
        # (docs/internals.md §4): one killed sooner after they joined forgets them.
        time.sleep(1.5)
        self.cp.proc.kill()
        self.cp.proc.wait(10)
        self.cp.stop()

    def records(self, **query: str) -> list[dict[str, object]]:
        with self.cp.client() as api:
            answer = api.get("/v1/audit/records", params={"limit": "10000", **query})
            answer.raise_for_status()
            items: list[dict[str, object]] = answer.json()["items"]
        return items

    def metric(self, outcome: str) -> int:
        text = httpx.get(f"http://127.0.0.1:{self.orders.ports['admin']}/metrics").text
        for line in text.splitlines():
            if line.startswith(f'gossamer_audit_records_total{{outcome="{outcome}"}}'):
                return int(float(line.split()[-1]))
        return 0

    def gossamer(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The CLI, as a user runs it against this control plane."""
        env = {**os.environ, "GOSSAMER_TOKEN": self.cp.token}
        return subprocess.run(
            [sys.executable, "-m", "gossamer.cli", *args, "--control-url", self.cp.api_url],
            capture_output=True, text=True, env=env, timeout=60, cwd=ROOT,
        )  # fmt: skip


def start_mesh(tmp: Path, config: str = "", before_orders: object = None) -> Mesh:
    stream_port = free_port()
    cp = start_control_plane(tmp / "cp", "--stream-addr", f"127.0.0.1:{stream_port}")
    with cp.client() as api:
        api.post("/v1/resources", content=RESOURCES + ("---\n" + config if config else ""),
                 headers={"content-type": "application/yaml"}).raise_for_status()  # fmt: skip
    procs = Processes(tmp)
    app = procs.app("orders-app")
    wait_port(app.ports["app"])
    if callable(before_orders):
        before_orders(tmp / "proxies" / "orders-sidecar")
    orders = procs.sidecar(cp, "orders-sidecar", "orders", app.ports["app"])
    web = procs.sidecar(cp, "web-sidecar", "web", None)
    wait_ready(orders)
    wait_ready(web)
    mesh = Mesh(tmp, stream_port, cp, procs, orders, web)
    mesh.orders_env = _env_of(orders)
    return mesh


def _env_of(proc: Proc) -> dict[str, str]:
    """The GOSSAMER_PROXY_* settings a sidecar was started with (from /proc)."""
    raw = Path(f"/proc/{proc.proc.pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode().partition("=") for item in raw if item.startswith(b"GOSSAMER_PROXY_"))
    return {key: value for key, _, value in pairs}


def stop_mesh(mesh: Mesh) -> None:
    mesh.procs.stop_all()
    if mesh.cp.proc.poll() is None:
        os.kill(mesh.cp.proc.pid, signal.SIGCONT)
    mesh.cp.stop()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    running = start_mesh(tmp_path)
    try:
        yield running
    finally:
        stop_mesh(running)


@dataclass
class Load:
    """Audited GETs through web's sidecar, each with its own request id (bounded)."""

    proxy: str
    outcomes: dict[str, str] = field(default_factory=dict)  # request id -> what came back
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def one(self, client: httpx.Client, method: str = "GET", path: str = "/orders/") -> str:
        rid = f"load-{next(_ids)}"
        try:
            answer = client.request(method, f"http://orders{path}{rid}",
                                    headers={"x-request-id": rid})  # fmt: skip
            outcome = str(answer.status_code)
            if answer.status_code != 200:
                outcome += " " + answer.headers.get("x-gossamer-error", "")
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        self.outcomes[rid] = outcome
        return outcome

    def _run(self, limit: float, count: int) -> None:
        deadline = time.monotonic() + limit
        with httpx.Client(proxy=self.proxy, timeout=5) as client:
            for _ in range(count):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                self.one(client)
                time.sleep(0.004)

    def start(self, threads: int = 2, limit: float = 120.0, count: int = 20_000) -> None:
        for _ in range(threads):
            thread = threading.Thread(target=self._run, args=(limit, count), daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self) -> Counter[str]:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        return Counter(self.outcomes.values())

    def ok(self) -> set[str]:
        return {rid for rid, outcome in self.outcomes.items() if outcome == "200"}


def shipped(mesh: Mesh, wanted: set[str], timeout: float = 60.0) -> Counter[str]:
    """Records per request id once every id of ``wanted`` has one (or the time is up)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = Counter(str(r["request_id"]) for r in mesh.records(service="orders"))
        if wanted <= set(counts) or time.monotonic() > deadline:
            return counts
        time.sleep(0.5)


def test_every_audited_request_is_recorded_once_queried_and_verified(mesh: Mesh) -> None:
    load = Load(mesh.proxy)
    with httpx.Client(proxy=mesh.proxy, timeout=5) as client:
        for _ in range(40):
            assert load.one(client) == "200"
        denied = [load.one(client, "DELETE") for _ in range(3)]
        assert denied == ["403 forbidden"] * 3
        unaudited = client.get("http://orders/health", headers={"x-request-id": "not-audited"})
        assert unaudited.status_code == 200
    counts = shipped(mesh, set(load.outcomes))
    assert counts == Counter({rid: 1 for rid in load.outcomes})  # each once, nothing else
    records = {str(r["request_id"]): r for r in mesh.records(service="orders")}
    sample = records[min(load.ok())]
    assert sample["caller"] == WEB and sample["method"] == "GET" and sample["status"] == 200
    assert sample["decision"] == "allow" and sample["audit_policies"] == ["default/audit-orders"]
    assert sample["path"] == f"/orders/{min(load.ok())}" and sample["authority"] == "orders"
    assert isinstance(sample["response_bytes"], int) and sample["response_bytes"] > 20
    assert sample["protocol"] == "HTTP/1.1" and float(str(sample["duration_ms"])) > 0
    deletes = [r for r in records.values() if r["method"] == "DELETE"]
    assert [(r["status"], r["decision"], r["policy"]) for r in deletes] == [
        (403, "deny", "default/no-deletes")] * 3  # fmt: skip

    query = mesh.gossamer("audit", "query", "--service", "orders", "--decision", "deny",
                          "-o", "json")  # fmt: skip
    assert query.returncode == 0, query.stderr
    assert sorted(r["request_id"] for r in json.loads(query.stdout)["items"]) == sorted(
        rid for rid, outcome in load.outcomes.items() if outcome.startswith("403"))  # fmt: skip

    verified = mesh.gossamer("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "43 records" in verified.stdout and "intact" in verified.stdout
    with mesh.cp.client() as api:  # the shipper signed at least one checkpoint
        (chain,) = api.get("/v1/audit/chains").json()["items"]
    assert chain["checkpoints"] >= 1 and chain["identity"].endswith("/sa/orders")

    with sqlite3.connect(mesh.cp.data_dir / "audit.db") as db:  # whoever holds the store
        db.execute("UPDATE records SET entry = replace(entry, '\"status\":200', "
                   "'\"status\":204') WHERE seq = 5")  # fmt: skip
        db.execute("DELETE FROM records WHERE seq = 9")
    tampered = mesh.gossamer("audit", "verify")
    assert tampered.returncode == 1
    assert "record 5: edited" in tampered.stdout, tampered.stdout
    assert "record 10: deleted: record 9 missing before it" in tampered.stdout, tampered.stdout


def test_retention_removes_old_records_up_to_a_signed_checkpoint_and_the_rest_verifies(
    tmp_path: Path,
) -> None:
    """With ``spec.audit.retention`` the control plane removes what it received longer ago,
    only up to a checkpoint the sidecar signed; ``audit verify`` still passes and says what
    retention removed, and the records after the checkpoint stay."""
    def retention(value: str) -> str:
        return ("apiVersion: gossamer.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: default}\n"
                f"spec: {{audit: {{retention: {value}}}}}\n")  # fmt: skip

    mesh = start_mesh(tmp_path, retention("4s"))
    try:
        load = Load(mesh.proxy)
        with httpx.Client(proxy=mesh.proxy, timeout=5) as client:
            for _ in range(20):
                assert load.one(client) == "200"
        first = set(load.outcomes)
        assert set(shipped(mesh, first)) >= first
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # a checkpoint comes within 10 s, then 4 s pass
            with mesh.cp.client() as api:
                (chain,) = api.get("/v1/audit/chains").json()["items"]
            if chain["pruned_through"] >= 20:
                break
            time.sleep(0.5)
        assert chain["pruned_through"] >= 20, chain
        with mesh.cp.client() as api:  # from here on nothing moves: the checks cannot race it
            api.post("/v1/resources", content=retention("forever"),
                     headers={"content-type": "application/yaml"}).raise_for_status()  # fmt: skip
            time.sleep(1.5)  # a prune under way ends; the loop then keeps everything
            (chain,) = api.get("/v1/audit/chains").json()["items"]
        with httpx.Client(proxy=mesh.proxy, timeout=5) as client:
            assert load.one(client) == "200"
        (latest,) = set(load.outcomes) - first
        assert set(shipped(mesh, {latest})) == {latest}  # only the new one is left
        verified = mesh.gossamer("audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "intact" in verified.stdout, verified.stdout
        assert f"records 1-{chain['pruned_through']} removed by retention" in verified.stdout
        with sqlite3.connect(mesh.cp.data_dir / "audit.db") as db:  # whoever holds the store
            db.execute("DELETE FROM anchors")
        tampered = mesh.gossamer("audit", "verify")
        assert tampered.returncode == 1 and ": deleted: records 1-" in tampered.stdout
    finally:
        stop_mesh(mesh)


@pytest.mark.parametrize(
    "seconds", [8.0, pytest.param(60.0, marks=pytest.mark.slow)], ids=["8s", "60s"]
)
def test_control_plane_down_under_load_loses_no_record(mesh: Mesh, seconds: float) -> None:
    load = Load(mesh.proxy)
    load.start()
    time.sleep(1.0)
    mesh.kill_control_plane()
    time.sleep(seconds)
    mesh.restart_control_plane()
    time.sleep(1.0)
    outcomes = load.finish()
    assert set(outcomes) == {"200"}, outcomes  # the data path never needed the control plane
    counts = shipped(mesh, load.ok())
    assert counts == Counter({rid: 1 for rid in load.ok()})


def test_sidecar_killed_mid_load_and_restarted_loses_no_record(mesh: Mesh) -> None:
    load = Load(mesh.proxy)
    load.start()
    time.sleep(1.5)
    mesh.orders.proc.kill()  # SIGKILL: no drain, no flush
    mesh.orders.proc.wait(10)
    time.sleep(0.5)
    again = mesh.procs.spawn("orders-sidecar-again", [sys.executable, "-m", "gossamer.proxy"],
                             mesh.orders_env)  # fmt: skip
    again.ports.update(mesh.orders.ports)
    wait_ready(again)
    time.sleep(2.0)
    outcomes = load.finish()
    assert outcomes["200"] > 200, outcomes
    counts = shipped(mesh, load.ok())
    missing = sorted(int(rid.split("-")[1]) for rid in load.ok() if counts[rid] != 1)
    assert not missing, (missing, len(load.ok()), len(counts), outcomes)  # each: one record
    assert max(counts.values()) == 1  # and none twice
    verified = mesh.gossamer("audit", "verify")  # the restarted sidecar continued its chain
    assert verified.returncode == 0 and verified.stdout.count("chain ") == 1, verified.stdout


def _fill_then_recover(mesh: Mesh) -> tuple[Load, list[str]]:
    """Load while the control plane is down, until the spool is full (bounded), then the
    control plane back and load until records are written again (bounded); and the
    outcomes of 20 requests after that."""
    load = Load(mesh.proxy)
    mesh.kill_control_plane()
    with httpx.Client(proxy=mesh.proxy, timeout=5) as client:
        for _ in range(600):
            load.one(client)
        written = mesh.metric("written")
        mesh.restart_control_plane()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if load.one(client) == "200" and mesh.metric("written") > written:
                break
            time.sleep(0.1)
        after = [load.one(client) for _ in range(20)]
    return load, after


def test_spool_full_with_block_refuses_new_audited_requests_and_records_the_rest(
    tmp_path: Path,
) -> None:
    mesh = start_mesh(tmp_path, mesh_config("16KiB", "block"))
    try:
        load, after = _fill_then_recover(mesh)
        outcomes = Counter(load.outcomes.values())
        assert outcomes["503 audit-unavailable"] > 0, outcomes
        assert set(outcomes) == {"200", "503 audit-unavailable"}, outcomes
        assert after == ["200"] * 20  # shipped, so room again
        assert mesh.metric("refused") == outcomes["503 audit-unavailable"]
        assert mesh.metric("dropped") == 0
        counts = shipped(mesh, load.ok())
        assert counts == Counter({rid: 1 for rid in load.ok()})
    finally:
        stop_mesh(mesh)


def test_spool_full_with_drop_lets_requests_through_and_the_chain_counts_the_gap(
    tmp_path: Path,
) -> None:
    mesh = start_mesh(tmp_path, mesh_config("16KiB", "drop"))
    try:
        load, _after = _fill_then_recover(mesh)
        assert set(load.outcomes.values()) == {"200"}
        dropped = mesh.metric("dropped")
        assert dropped > 0
        wanted = len(load.ok()) - dropped  # every request went through; these have a record
        counts = shipped(mesh, set())
        deadline = time.monotonic() + 30
        while len(counts) < wanted and time.monotonic() < deadline:
            time.sleep(0.5)
            counts = shipped(mesh, set())
        assert len(counts) == wanted and max(counts.values()) == 1
        gaps = [r.get("dropped_before") for r in mesh.records(service="orders")]
        assert sum(int(str(g)) for g in gaps if g) == dropped
        verified = mesh.gossamer("audit", "verify")
        assert verified.returncode == 0, verified.stdout
    finally:
        stop_mesh(mesh)


def _mount_tmpfs(path: Path) -> None:
    path.mkdir(parents=True, mode=0o700)
    audit = path / "audit"
    audit.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs",
                           str(audit)], capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def test_a_full_disk_blocks_audited_requests_until_records_are_shipped(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    audit = tmp_path / "proxies" / "orders-sidecar" / "audit"
    try:
        mesh = start_mesh(tmp_path, before_orders=_mount_tmpfs)
        try:
            load, after = _fill_then_recover(mesh)
            outcomes = Counter(load.outcomes.values())
            assert outcomes["503 audit-unavailable"] > 0, outcomes  # the disk, not the limit
            assert set(outcomes) == {"200", "503 audit-unavailable"}, outcomes
            assert after == ["200"] * 20  # shipped, so room again
            counts = shipped(mesh, load.ok())
            assert counts == Counter({rid: 1 for rid in load.ok()})
        finally:
            stop_mesh(mesh)
    finally:
        subprocess.run(["umount", str(audit)], capture_output=True)
