"""Story 4: switch the database under a running service, with a real PostgreSQL.

Two PostgreSQL clusters (blue and green) run on free loopback ports, each beside its own
sidecar (services ``db-blue`` and ``db-green``, port protocol tcp). An app process keeps a pool
of four connections to ``db`` through its sidecar's upstream listener, running
``SELECT current_setting('port')`` in a loop, so every answer names the cluster that gave it.
A TCPRoute sends ``db`` to blue; the test then applies one that sends it to green with
``drainTimeout: 3s``, through the real control plane API, and checks the story: new
connections land on green at once, the pool's connections keep working on blue until the drain
deadline, then they are closed, the app reconnects and lands on green, no query fails outside
the drain window, and no process restarts.

PostgreSQL comes from the Debian package (installed when missing by
scripts/ensure-debian-packages). ``initdb`` refuses to run as root, so as root the clusters are
created and run as the ``postgres`` user (``runuser -u postgres --``) in a temporary directory
owned by it; as another user they run as that user.

Run ``python -m tests.e2e.test_database_switch PORT OUT STOP`` to get the pool app alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.control_helpers import ControlPlaneProcess, running_control_plane
from tests.process_harness import Proc, Processes, wait_ready
from tests.sidecar_harness import free_port
from tests.tools import require

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
DRAIN_SECONDS = 3.0
POOL_SIZE = 4

RESOURCES = """
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: db}
spec: {ports: [{port: 5432, protocol: tcp}]}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: db-blue}
spec: {ports: [{port: 5432, protocol: tcp}]}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: db-green}
spec: {ports: [{port: 5432, protocol: tcp}]}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: orders}
spec: {calls: [db]}
"""


def tcp_route(backend: str) -> str:
    return f"""
apiVersion: gossamer.dev/v1alpha1
kind: TCPRoute
metadata: {{name: db}}
spec:
  service: db
  backends: [{{service: {backend}, weight: 100}}]
  drainTimeout: {DRAIN_SECONDS:g}s
"""


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin() -> Path | None:
    """The directory holding initdb and pg_ctl (the newest Debian version, else PATH)."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def ensure_postgres() -> Path:
    if postgres_bin() is None:
        subprocess.run([str(ROOT / "scripts" / "ensure-debian-packages"), "postgresql"],
                       check=False, timeout=600)
    found = postgres_bin()
    require(found is not None, "PostgreSQL (initdb, pg_ctl)")
    assert found is not None
    return found


def as_db_user(argv: list[str]) -> list[str]:
    """Run as ``postgres`` when we are root (initdb and postgres refuse root)."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class Cluster:
    name: str
    bin: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def initdb(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            as_db_user([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "-A", "trust", "-E", "UTF8", "--no-sync"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=30 -c shared_buffers=16MB")
        subprocess.run(
            as_db_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                        str(self.root / "server.log"), "-o", options, "-w", "-t", "30",
                        "start"]),
            check=True, stdout=subprocess.DEVNULL, timeout=60,
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                as_db_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                            "-w", "-t", "30", "stop"]),
                check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
            )

    @property
    def pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])


@pytest.fixture
def clusters() -> Iterator[dict[str, Cluster]]:
    bin_dir = ensure_postgres()
    base = Path(tempfile.mkdtemp(prefix="gossamer-pg-"))
    made = {name: Cluster(name, bin_dir, base / name, free_port()) for name in ("blue", "green")}
    try:
        for cluster in made.values():
            cluster.root.mkdir()
        if os.geteuid() == 0:
            shutil.chown(base, "postgres")
            for cluster in made.values():
                shutil.chown(cluster.root, "postgres")
        inits = [cluster.initdb() for cluster in made.values()]
        for proc in inits:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode(errors="replace")
        for cluster in made.values():
            cluster.start()
        yield made
    finally:
        for cluster in made.values():
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- the mesh


def apply(cp: ControlPlaneProcess, text: str) -> None:
    with cp.client() as api:
        response = api.post("/v1/resources", content=text,
                            headers={"Content-Type": "application/yaml"})
        assert response.status_code == 200, response.text


def sidecar_with_upstreams(procs: Processes, cp: ControlPlaneProcess, name: str,
                           service: str, upstreams: dict[str, int]) -> Proc:
    """A sidecar process like ``Processes.sidecar``, with TCP upstream listeners."""
    listeners = ",".join(f"{s}=127.0.0.1:{p}" for s, p in upstreams.items())
    return procs.sidecar(cp, name, service, None,
                         extra_env={"GOSSAMER_PROXY_UPSTREAMS": listeners})


def admin_get(proc: Proc, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{proc.ports['admin']}{path}", timeout=5)


def wait_for_route(proc: Proc, backend: str, timeout: float = 10.0) -> None:
    """Until the sidecar's config routes db to ``backend``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = admin_get(proc, "/config").json().get("snapshot") or {}
        for service in snapshot.get("outbound", {}).get("services", []):
            route = service.get("tcp_route") or {}
            if service.get("name") == "db" and any(
                b.get("service", "").startswith(backend + ".") for b in route.get("backends", [])
            ):
                return
        time.sleep(0.02)
    raise AssertionError(f"{proc.name} never routed db to {backend}:\n{proc.log()}")


def query_port(port: int) -> int:
    """Open a new connection through the upstream listener and ask which cluster answers."""
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                         connect_timeout=5, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('port')").fetchone()
        assert row is not None
        return int(row[0])


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_switching_the_database_drains_old_connections_and_moves_new_ones(
    tmp_path: Path, clusters: dict[str, Cluster]
) -> None:
    """A TCPRoute change moves `db` from blue to green under a running connection pool."""
    pytest.importorskip("psycopg")
    blue, green = clusters["blue"], clusters["green"]
    cluster_of = {blue.port: "blue", green.port: "green"}
    postmasters = {name: c.pid for name, c in clusters.items()}
    procs = Processes(tmp_path)
    with running_control_plane(tmp_path / "cp") as cp:
        try:
            apply(cp, RESOURCES + "---" + tcp_route("db-blue"))
            upstream = free_port()
            sidecars = [
                procs.sidecar(cp, "db-blue-proxy", "db-blue", blue.port),
                procs.sidecar(cp, "db-green-proxy", "db-green", green.port),
                sidecar_with_upstreams(procs, cp, "orders-proxy", "orders", {"db": upstream}),
            ]
            for proc in sidecars:
                wait_ready(proc)
            app_proxy = sidecars[2]
            wait_for_route(app_proxy, "db-blue")
            assert cluster_of[query_port(upstream)] == "blue"

            results, stop = tmp_path / "pool.jsonl", tmp_path / "pool.stop"
            pool = procs.spawn("orders-app", [
                sys.executable, "-m", "tests.e2e.test_database_switch",
                str(upstream), str(results), str(stop),
            ])
            wait_until(lambda: {r["conn"] for r in read_results(results) if r["ok"]}
                       == set(range(POOL_SIZE)), 20, "the pool's first answers")
            time.sleep(0.5)

            switch_start = time.time()
            apply(cp, tcp_route("db-green"))
            wait_for_route(app_proxy, "db-green")
            switched = time.time()
            fresh = [cluster_of[query_port(upstream)] for _ in range(3)]
            time.sleep(DRAIN_SECONDS + 3.0)
            stop.touch()
            assert pool.proc.wait(15) == 0, pool.log()
            metrics = admin_get(app_proxy, "/metrics").text
            exited = [p.name for p in sidecars if p.proc.poll() is not None]
            pids_now = {name: c.pid for name, c in clusters.items()}
        finally:
            procs.stop_all()

    assert fresh == ["green"] * 3, "new connections after the switch must land on green"
    records = read_results(results)
    answers = [r for r in records if r["ok"]]
    failures = [r for r in records if not r["ok"]]
    assert all(cluster_of[r["port"]] == "blue" for r in answers if r["t"] < switch_start)
    drain_opens = switch_start + DRAIN_SECONDS - 0.3
    drain_closes = switched + DRAIN_SECONDS + 1.5
    outside = [f for f in failures if not drain_opens <= f["t"] <= drain_closes]
    assert not outside, f"queries failed outside the drain window: {outside}"
    for conn in range(POOL_SIZE):
        mine = [r for r in answers if r["conn"] == conn]
        first_generation = [r for r in mine if r["gen"] == 0]
        assert first_generation, f"connection {conn} never answered"
        assert max(r["t"] for r in first_generation) > switch_start + DRAIN_SECONDS - 1.0, (
            f"connection {conn} stopped working long before the drain deadline")
        assert all(cluster_of[r["port"]] == "blue" for r in first_generation)
        later = [r for r in mine if r["t"] > drain_closes]
        assert later and all(cluster_of[r["port"]] == "green" for r in later), (
            f"connection {conn} did not come back on green")
        assert len([f for f in failures if f["conn"] == conn]) <= 3
    drained = ('gossamer_tcp_relay_drained_total{direction="outbound",src_service="orders",'
               f'dst_service="db-blue"}} {POOL_SIZE}')
    assert drained in metrics
    assert not exited, f"processes exited: {exited}"
    assert pids_now == postmasters, "a database restarted"


# --------------------------------------------------------------------------- the pool app


def _pool_worker(conn_id: int, port: int, out: Any, lock: threading.Lock,
                 stop: Path) -> None:
    import psycopg

    generation = -1
    conn: Any = None
    while not stop.exists():
        record: dict[str, Any] = {"conn": conn_id, "t": time.time()}
        try:
            if conn is None:
                generation += 1
                conn = psycopg.connect(host="127.0.0.1", port=port, user="postgres",
                                       dbname="postgres", connect_timeout=3, autocommit=True)
            row = conn.execute("SELECT current_setting('port')").fetchone()
            record.update(ok=True, port=int(row[0]), gen=generation)
        except psycopg.Error as exc:
            record.update(ok=False, error=str(exc).strip()[:200], gen=generation)
            if conn is not None:
                conn.close()
            conn = None
        record["t"] = time.time()
        with lock:
            out.write(json.dumps(record) + "\n")
            out.flush()
        time.sleep(0.05 if record["ok"] else 0.1)
    if conn is not None:
        conn.close()


def pool_main(argv: list[str]) -> int:
    """The app: POOL_SIZE persistent connections, each querying in a loop until ``stop``."""
    port, out_path, stop_path = int(argv[0]), Path(argv[1]), Path(argv[2])
    lock = threading.Lock()
    deadline = time.monotonic() + 60
    with out_path.open("a") as out:
        workers = [
            threading.Thread(target=_pool_worker, args=(i, port, out, lock, stop_path),
                             daemon=True)
            for i in range(POOL_SIZE)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
    return 0


if __name__ == "__main__":
    raise SystemExit(pool_main(sys.argv[1:]))
