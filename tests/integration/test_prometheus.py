"""Prometheus for real (issue 14, item 5): Debian's ``prometheus`` finds every sidecar through
the control plane's HTTP service discovery (``GET /v1/prometheus/targets``, the admin token
from the data directory), scrapes their ``/metrics``, and answers PromQL for a per-edge success
rate and p99 latency.

Real parts: a control plane, sidecar processes, an app, and a Prometheus server, all started
and stopped by PID.
"""

from __future__ import annotations

import json
import shutil
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

from tests.integration.control_helpers import ControlPlaneProcess, running_control_plane
from tests.process_harness import ROOT, Proc, Processes, free_port, wait_port, wait_ready
from tests.tools import require

OK_CALLS = 20
FAILED_CALLS = 5  # the app answers 502 (whoami's /forge-unprocessed)


@dataclass
class Mesh:
    cp: ControlPlaneProcess
    frontend: Proc
    prometheus: str  # its HTTP API's base URL

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": promql},
                           timeout=10).json()  # fmt: skip
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def until(self, promql: str, check: Any, what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 60
        while True:
            result = self.query(promql)
            if check(result):
                return result
            assert time.monotonic() < deadline, f"{what}: {result}"
            time.sleep(0.5)


def _config(cp: ControlPlaneProcess, path: Path) -> Path:
    path.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: gossamer
    http_sd_configs:
      - url: {cp.api_url}/v1/prometheus/targets
        refresh_interval: 1s
        authorization: {{type: Bearer, credentials_file: {cp.data_dir / "admin.token"}}}
""")
    return path


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    require(shutil.which("prometheus") is not None, "prometheus (Debian package prometheus)")
    tmp = tmp_path_factory.mktemp("prometheus")
    with running_control_plane(tmp / "cp") as cp:
        procs = Processes(tmp)
        try:
            app = procs.app("orders-app")
            wait_port(app.ports["app"])
            orders = procs.sidecar(cp, "orders-sidecar", "orders", app.ports["app"],
                                   labels="version=v1")  # fmt: skip
            frontend = procs.sidecar(cp, "frontend-sidecar", "frontend", None)
            wait_ready(orders)
            wait_ready(frontend)
            port = free_port()
            procs.spawn("prometheus", [
                "prometheus", f"--config.file={_config(cp, tmp / 'prometheus.yml')}",
                f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
            ])  # fmt: skip
            wait_port(port, timeout=30)
            yield Mesh(cp, frontend, f"http://127.0.0.1:{port}")
        finally:
            procs.stop_all()


def test_service_discovery_lists_every_sidecar(mesh: Mesh) -> None:
    with mesh.cp.client() as api:
        groups = api.get("/v1/prometheus/targets").json()
        assert api.get("/v1/prometheus/targets", headers={"authorization": ""}).status_code == 401
    by_service = {g["labels"]["service"]: g for g in groups}
    assert set(by_service) == {"orders", "frontend"}
    orders = by_service["orders"]["labels"]
    assert orders["identity"] == "spiffe://gossamer.local/ns/default/sa/orders"
    assert orders["__meta_gossamer_label_version"] == "v1"
    up = mesh.until('up{job="gossamer"}', lambda r: len(r) == 2, "both sidecars scraped")
    assert {(r["metric"]["service"], r["value"][1]) for r in up} == {("orders", "1"),
                                                                    ("frontend", "1")}


def test_promql_answers_per_edge_success_rate_and_p99(mesh: Mesh) -> None:
    proxy = f"http://127.0.0.1:{mesh.frontend.ports['outbound']}"
    with httpx.Client(proxy=proxy, timeout=10, trust_env=False) as client:
        codes = [client.get("http://orders/items").status_code for _ in range(OK_CALLS)]
        codes += [client.get("http://orders/forge-unprocessed").status_code
                  for _ in range(FAILED_CALLS)]  # fmt: skip
    assert codes.count(200) == OK_CALLS and codes.count(502) == FAILED_CALLS
    edge = 'direction="outbound",src_service="frontend",dst_service="orders"'
    total = OK_CALLS + FAILED_CALLS
    mesh.until(f"sum(gossamer_requests_total{{{edge}}})",
               lambda r: r and float(r[0]["value"][1]) == total, "every call scraped")  # fmt: skip
    rate = mesh.query(
        f'sum by (src_service, dst_service) (gossamer_requests_total{{{edge},code!~"5.."}})'
        f" / sum by (src_service, dst_service) (gossamer_requests_total{{{edge}}})"
    )
    assert len(rate) == 1 and rate[0]["metric"] == {"src_service": "frontend",
                                                     "dst_service": "orders"}  # fmt: skip
    assert float(rate[0]["value"][1]) == OK_CALLS / total
    p99 = mesh.query(
        "histogram_quantile(0.99, sum by (le, src_service, dst_service) "
        f"(gossamer_request_duration_seconds_bucket{{{edge}}}))"
    )
    assert len(p99) == 1 and 0 < float(p99[0]["value"][1]) < 5.0


def test_every_panel_of_the_grafana_dashboard_is_a_query_prometheus_answers(
    mesh: Mesh,
) -> None:
    """examples/grafana/gossamer-mesh.json: each panel's PromQL runs on the real Prometheus;
    those about HTTP traffic and certificates have series for this mesh (gRPC, TCP,
    authorization and spans have none here, and must still be valid queries)."""
    dashboard = json.loads((ROOT / "examples/grafana/gossamer-mesh.json").read_text())
    proxy = f"http://127.0.0.1:{mesh.frontend.ports['outbound']}"
    with httpx.Client(proxy=proxy, timeout=10, trust_env=False) as client:
        for _ in range(3):  # traffic over several scrapes, so that rates have an increase
            assert all(client.get("http://orders/items").status_code == 200 for _ in range(10))
            time.sleep(1.2)
    with_data = {"Success rate per edge", "Requests per second per edge",
                 "p50 / p95 / p99 latency per edge",
                 "Inbound requests per second by caller identity",
                 "Days until a certificate expires"}  # fmt: skip
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            result = mesh.query(target["expr"])  # a PromQL error fails here
            if panel["title"] in with_data:
                assert result, f"{panel['title']}: no series for {target['expr']}"
    days = mesh.query(dashboard["panels"][8]["targets"][0]["expr"])
    assert all(0 < float(r["value"][1]) < 3650 for r in days)


def _cli_json(mesh: Mesh, command: str, window: float) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "gossamer.cli", command, "--window", str(window), "-o", "json",
         "--control-url", mesh.cp.api_url, "--data-dir", str(mesh.cp.data_dir)],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_stat_and_edges_read_the_sidecars_now(mesh: Mesh) -> None:
    """`gossamer stat` and `gossamer edges` scrape every sidecar twice and report what
    happened in between: while calls go on (four answered, one failing, over and over), the
    figures are those of the window."""
    stop = threading.Event()
    made = {"calls": 0}

    def traffic() -> None:
        proxy = f"http://127.0.0.1:{mesh.frontend.ports['outbound']}"
        deadline = time.monotonic() + 30
        with httpx.Client(proxy=proxy, timeout=10, trust_env=False) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                for path in ("/items", "/items", "/items", "/items", "/forge-unprocessed"):
                    client.get(f"http://orders{path}")
                    made["calls"] += 1

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(0.5)
        stats = _cli_json(mesh, "stat", 2.0)
        links = _cli_json(mesh, "edges", 2.0)
    finally:
        stop.set()
        thread.join(40)
    assert made["calls"] > 50
    (orders,) = [i for i in stats["items"] if i["service"] == "orders"]
    assert 0.7 < orders["success"] < 0.9  # 4 of 5, cut anywhere by the window
    assert orders["rps"] > 5 and 0 < orders["p50"] <= orders["p95"] <= orders["p99"] < 5
    (edge,) = [i for i in links["items"] if (i["src"], i["dst"]) == ("frontend", "orders")]
    assert edge["identity"] == "spiffe://gossamer.local/ns/default/sa/orders" and edge["mtls"]
    assert 0.7 < edge["success"] < 0.9 and edge["rps"] > 5
