"""``gossamer tap`` and ``gossamer top`` (issue 14) with real processes: a control plane,
``orders`` (the whoami app behind a sidecar of two worker processes) and ``web`` (a sidecar,
the caller). Load goes to orders through web's sidecar while the CLI taps orders, as a user
runs it: the requests come with their identity, status and latency, no more a second than
asked, only with the admin token; and a sidecar that no one taps has no tap stage left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gossamer.control.ca import CertificateAuthority
from gossamer.proxy.pipeline.tap import TapStage
from tests.integration.control_helpers import ControlPlaneProcess, running_control_plane
from tests.process_harness import Proc, Processes, wait_port, wait_ready
from tests.sidecar_harness import LoopThread, snapshot, start_sidecar

ROOT = Path(__file__).resolve().parents[2]
WEB = "spiffe://gossamer.local/ns/default/sa/web"
SERVICES = """
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: orders}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: web}
spec: {calls: [orders]}
"""


@dataclass
class Mesh:
    cp: ControlPlaneProcess
    orders: Proc
    web: Proc

    def gossamer(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "GOSSAMER_TOKEN": self.cp.token}
        return subprocess.run(
            [sys.executable, "-m", "gossamer.cli", *args, "--control-url", self.cp.api_url],
            capture_output=True, text=True, env=env, timeout=60, cwd=ROOT,
        )  # fmt: skip


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("tap")
    with running_control_plane(tmp / "cp") as cp:
        with cp.client() as api:
            api.post("/v1/resources", content=SERVICES,
                     headers={"content-type": "application/yaml"}).raise_for_status()  # fmt: skip
        procs = Processes(tmp)
        try:
            app = procs.app("orders-app")
            wait_port(app.ports["app"])
            orders = procs.sidecar(cp, "orders-sidecar", "orders", app.ports["app"],
                                   extra_env={"GOSSAMER_PROXY_WORKERS": "2"})  # fmt: skip
            web = procs.sidecar(cp, "web-sidecar", "web", None)
            wait_ready(orders)
            wait_ready(web)
            yield Mesh(cp, orders, web)
        finally:
            procs.stop_all()


class Load:
    """GETs of /orders/list through web's sidecar from two threads (bounded)."""

    def __init__(self, mesh: Mesh) -> None:
        self.proxy = f"http://127.0.0.1:{mesh.web.ports['outbound']}"
        self.stop = threading.Event()
        self.sent = 0
        self.threads = [threading.Thread(target=self._run) for _ in range(2)]

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        with httpx.Client(proxy=self.proxy, timeout=5) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                client.get("http://orders/orders/list")
                self.sent += 1

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def test_tap_streams_the_requests_with_identity_status_and_latency(mesh: Mesh) -> None:
    with Load(mesh) as load:
        tapped = mesh.gossamer("tap", "orders", "--seconds", "3", "--max-rps", "5", "-o", "json")
    assert tapped.returncode == 0, tapped.stderr
    events = [json.loads(line) for line in tapped.stdout.splitlines()]
    assert events[0]["type"] == "started" and len(events[0]["proxies"]) == 1
    assert events[-1] == {"type": "end", "dropped": 0}
    requests = [e for e in events if e["type"] == "request"]
    assert requests and load.sent > 3 * len(requests)  # sampled: far fewer than were sent
    for event in requests:
        assert (event["direction"], event["method"], event["path"], event["status"]) == (
            "inbound", "GET", "/orders/list", 200)  # fmt: skip
        assert event["peer"] == WEB and event["duration_ms"] > 0 and event["request_id"]
    # Two workers share the work; each keeps to 5 a second (a burst of 5, then 5 a second).
    assert len(requests) <= 2 * (5 + 5 * 3) + 2
    assert Counter(e["proxy_id"] for e in requests).keys() == set(events[0]["proxies"])


def test_tap_in_table_form_and_top(mesh: Mesh) -> None:
    with Load(mesh):
        tapped = mesh.gossamer("tap", "orders", "--seconds", "2", "--max-rps", "2")
        top = mesh.gossamer("top", "orders", "--seconds", "2", "-o", "json")
    assert tapped.returncode == 0, tapped.stderr
    lines = tapped.stdout.splitlines()
    assert lines[0] == "tapping 1 sidecar(s) of default/orders for 2 s, at most 2 requests/s each"
    assert any(" inbound   GET /orders/list  200  " in line and line.endswith(f"from {WEB}")
               for line in lines[1:]), lines  # fmt: skip
    assert top.returncode == 0, top.stderr
    (row,) = json.loads(top.stdout)["items"]
    assert (row["direction"], row["peer"], row["method"], row["path"]) == (
        "inbound", WEB, "GET", "/orders/list")  # fmt: skip
    assert row["count"] > 5 and row["success"] == 1.0
    assert 0 < row["best_ms"] <= row["worst_ms"]


def test_a_sidecar_that_connects_mid_tap_is_tapped_for_the_time_left(
    mesh: Mesh, tmp_path: Path
) -> None:
    """A new replica of the tapped service (or a restarted one) joins the session: the stream
    says so, and its requests come too, not only those of the sidecars there at the start."""
    env = {**os.environ, "GOSSAMER_TOKEN": mesh.cp.token}
    # Both replicas must serve for the test to mean anything: round robin, since PeakEWMA may
    # send two replicas' traffic to the faster one for seconds (seen: 0 of 8,242 requests to
    # the first replica, after an earlier latency peak of its own).
    policy = {"apiVersion": "gossamer.dev/v1alpha1", "kind": "TrafficPolicy",
              "metadata": {"name": "orders-rr"},
              "spec": {"service": "orders", "loadBalancer": {"type": "RoundRobin"}}}  # fmt: skip
    with mesh.cp.client() as api:
        assert api.post("/v1/resources", json=policy).status_code == 200
    tap = subprocess.Popen(
        [sys.executable, "-m", "gossamer.cli", "tap", "orders", "--seconds", "20", "--max-rps",
         "20", "-o", "json", "--control-url", mesh.cp.api_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    procs = Processes(tmp_path)
    try:
        assert tap.stdout is not None
        started = json.loads(tap.stdout.readline())
        assert started["type"] == "started" and len(started["proxies"]) == 1
        app = procs.app("orders-app-2")
        wait_port(app.ports["app"])
        second = procs.sidecar(mesh.cp, "orders-sidecar-2", "orders", app.ports["app"])
        wait_ready(second)
        with Load(mesh):
            time.sleep(6)  # web's sidecar learns the new endpoint; both serve
        procs.stop_all()
        out, err = tap.communicate(timeout=60)
    finally:
        procs.stop_all()
        if tap.poll() is None:
            tap.kill()
            tap.wait(10)
        with mesh.cp.client() as api:
            api.delete("/v1/resources/trafficpolicy/default/orders-rr")
    assert tap.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    joined = [e["proxy_id"] for e in events if e["type"] == "joined"]
    assert len(joined) == 1 and joined[0] not in started["proxies"], events[:5]
    by = Counter(e["proxy_id"] for e in events if e["type"] == "request")
    assert by[joined[0]] > 0 and by[started["proxies"][0]] > 0, by
    assert events[-1]["type"] == "end"


def test_tap_needs_the_admin_token_and_a_running_service(mesh: Mesh) -> None:
    with mesh.cp.client(authenticated=False) as api:
        assert api.get("/v1/tap/default/orders", params={"seconds": "1"}).status_code == 401
    missing = mesh.gossamer("tap", "payments", "--seconds", "1")
    assert missing.returncode == 1
    assert "no connected sidecar of default/payments" in missing.stderr
    bad = mesh.gossamer("tap", "orders", "--seconds", "1", "--path", "orders")
    assert bad.returncode == 1 and "path: expected a prefix starting with /" in bad.stderr


def test_a_tap_adds_stages_only_while_it_lasts(tmp_path: Path) -> None:
    """In one sidecar: nothing tapped, no stages at all; a tap adds its stage to both
    directions, emits what matches, and leaves nothing behind when it stops."""
    lt = LoopThread()
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    sidecar = lt.run(start_sidecar(ca, tmp_path / "orders", "orders", None))
    try:
        state = sidecar.state
        lt.run(_apply(state))
        assert state.table.inbound_stages is None and state.table.outbound_stages is None
        sent: list[dict[str, object]] = []
        state.tap_hook = sent.append
        lt.run(_call(state.start_tap, {"id": "t1", "max_rps": 5, "seconds": 30}))
        stages = state.table.inbound_stages
        assert stages is not None and [type(s) for s in stages.all] == [TapStage]
        lt.run(_call(state.stop_tap, {"id": "t1"}))
        assert state.table.inbound_stages is None and state.table.outbound_stages is None
        lt.run(_apply(state))  # a new config while no one taps: still nothing
        assert state.table.inbound_stages is None
    finally:
        lt.run(sidecar.close())
        lt.stop()


async def _apply(state: object) -> None:
    state.apply_snapshot(2, snapshot(2, {}, source="orders"))  # type: ignore[attr-defined]


async def _call(method: object, message: dict[str, object]) -> None:
    method(message)  # type: ignore[operator]
