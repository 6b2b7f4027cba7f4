"""Users' filters (``gossamer.filters``) in real sidecar processes, on HTTP/1.1 and on gRPC.

frontend sidecar (the test is its app; outbound filter ``Tagging``) -> mTLS ->
catalog sidecar -> whoami app (HTTP/1.1) and greeter sidecar -> gRPC echo app (h2c), both with
the example filter of ``examples/filters`` (installed with pip into a directory on the
sidecars' PYTHONPATH, named once by its entry point and once as ``module:attribute``) and a
filter that raises.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tests.integration.control_helpers import ControlPlaneProcess, running_control_plane
from tests.process_harness import ROOT, Proc, Processes, wait_port, wait_ready
from tests.sidecar_harness import app_proxy_env, free_port

EXAMPLE = ROOT / "examples" / "filters"
TENANTS = {"plans": {"acme": "gold", "globex": "silver"}, "suspended": ["initech"]}


def _filter(name: str, service: str, ref: str, config: dict[str, Any] | None = None,
            **spec: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "ProxyFilter",
        "metadata": {"name": name},
        "spec": {"service": service, "filter": ref, "config": config or {}, **spec},
    }


FILTERS = [
    _filter("tenants-catalog", "catalog", "tenants", TENANTS),  # the entry point
    _filter("tenants-greeter", "greeter", "tenant_filter:TenantFilter", TENANTS),
    _filter(
        "boom-catalog", "catalog", "tests.apps.filters:Exploding", {"path": "/boom"}, priority=-1
    ),
    _filter(
        "boom-greeter", "greeter", "tests.apps.filters:Exploding", {"path": "/test.Echo/Boom"},
        priority=-1,
    ),
    _filter("tag-frontend", "frontend", "tests.apps.filters:Tagging", direction="outbound"),
]


@dataclass
class FilterMesh:
    cp: ControlPlaneProcess
    frontend: Proc
    catalog: Proc
    greeter: Proc

    def get(self, path: str, **headers: str) -> httpx.Response:
        proxy = f"http://127.0.0.1:{self.frontend.ports['outbound']}"
        with httpx.Client(proxy=proxy, timeout=10) as client:
            return client.get(f"http://catalog{path}", headers=headers)

    def grpc_call(self, method: str, *metadata: tuple[str, str]) -> tuple[dict[str, Any], Any]:
        """Call ``/test.Echo/<method>`` on greeter through the frontend sidecar (h2c); the
        answer's JSON and the call (for its initial metadata)."""
        with pytest.MonkeyPatch.context() as env:
            app_proxy_env(env, self.frontend.ports["outbound"])  # as `gossamer run` would
            with grpc.insecure_channel("greeter:80") as channel:
                stub = channel.unary_unary(f"/test.Echo/{method}")
                reply, call = stub.with_call(b"", metadata=metadata, timeout=10)
                return json.loads(reply), call

    def metrics(self, proc: Proc) -> str:
        return httpx.get(f"http://127.0.0.1:{proc.ports['admin']}/metrics", timeout=5).text


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example filter installed as a user would, into a directory of its own (built from
    a copy: a build leaves files beside the sources)."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("example") / "filters"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True, timeout=300,
    )  # fmt: skip
    return target


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, site_dir: Path) -> Iterator[FilterMesh]:
    tmp = tmp_path_factory.mktemp("filters")
    env = {"PYTHONPATH": f"{site_dir}:{ROOT}"}
    with running_control_plane(tmp / "cp") as cp:
        with cp.client() as api:
            for doc in FILTERS:
                assert api.post("/v1/resources", json=doc).status_code == 200
        procs = Processes(tmp)
        try:
            app = procs.app("catalog-app")
            greeter_port = free_port()
            procs.spawn("greeter-app", [sys.executable, str(ROOT / "tests/apps/grpc_echo.py"),
                                        str(greeter_port), "greeter-1"])  # fmt: skip
            wait_port(app.ports["app"])
            wait_port(greeter_port)
            catalog = procs.sidecar(cp, "catalog-sidecar", "catalog", app.ports["app"],
                                    extra_env=env)  # fmt: skip
            greeter = procs.sidecar(cp, "greeter-sidecar", "greeter", greeter_port,
                                    extra_env=env)  # fmt: skip
            frontend = procs.sidecar(cp, "frontend-sidecar", "frontend", None, extra_env=env)
            for proc in (catalog, greeter, frontend):
                wait_ready(proc)
            yield FilterMesh(cp, frontend, catalog, greeter)
        finally:
            procs.stop_all()


def test_a_filter_adds_a_header_from_its_lookup_on_http1(mesh: FilterMesh) -> None:
    response = mesh.get("/items", **{"x-tenant": "acme"})
    assert response.status_code == 200
    seen = response.json()["headers"]
    assert seen["x-tenant-plan"] == "gold"  # the inbound filter, for the app
    assert seen["x-filtered-by"] == "tagging HTTP/1.1 outbound"  # the caller's outbound filter
    assert response.headers["x-tenant-plan"] == "gold"  # on_response, inbound
    assert response.headers["x-filtered-by"] == "tagging /items"  # on_response, outbound
    assert mesh.get("/", **{"x-tenant": "nobody"}).json()["headers"]["x-tenant-plan"] == "free"


def test_the_same_filter_runs_on_grpc(mesh: FilterMesh) -> None:
    reply, call = mesh.grpc_call("Meta", ("x-tenant", "globex"))
    assert reply["metadata"]["x-tenant-plan"] == "silver"
    assert reply["metadata"]["x-filtered-by"] == "tagging HTTP/2 outbound"
    initial = dict(call.initial_metadata())
    assert initial["x-tenant-plan"] == "silver"
    assert initial["x-filtered-by"] == "tagging /test.Echo/Meta"


def test_a_rejecting_filter_answers_for_the_app(mesh: FilterMesh) -> None:
    response = mesh.get("/", **{"x-tenant": "initech"})
    assert response.status_code == 403
    assert response.headers["x-gossamer-error"] == "filter-rejected"
    assert response.headers["x-tenant-plan"] == "suspended"
    assert "tenant initech is suspended" in response.text
    with pytest.raises(grpc.RpcError) as caught:
        mesh.grpc_call("Meta", ("x-tenant", "initech"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    denied = mesh.get("/", **{"x-deny": "1"})  # the caller's own outbound filter refuses
    assert denied.status_code == 403 and denied.headers["x-denied-by"] == "tagging"


def test_a_failing_filter_gives_filter_failed_and_the_sidecar_lives_on(mesh: FilterMesh) -> None:
    response = mesh.get("/boom")
    assert response.status_code == 500
    assert response.headers["x-gossamer-error"] == "filter-failed"
    assert "default/boom-catalog" in response.text
    assert "secret detail" not in response.text  # exception text never reaches callers
    with pytest.raises(grpc.RpcError) as caught:
        mesh.grpc_call("Boom")
    trailers = dict(caught.value.trailing_metadata() or ())
    initial = dict(caught.value.initial_metadata() or ())
    assert {**initial, **trailers}.get("x-gossamer-error") == "filter-failed"
    assert caught.value.code() != grpc.StatusCode.OK
    assert mesh.get("/", **{"x-tenant": "acme"}).status_code == 200  # still serving
    assert mesh.grpc_call("Meta")[0]["instance"] == "greeter-1"
    for proc in (mesh.catalog, mesh.greeter):
        assert proc.proc.poll() is None


def test_filters_count_in_the_sidecar_metrics(mesh: FilterMesh) -> None:
    mesh.get("/", **{"x-tenant": "acme"})
    mesh.get("/boom")
    text = mesh.metrics(mesh.catalog)
    assert _sample(text, 'gossamer_filter_events_total{filter="default/tenants-catalog",'
                         'event="gold"}') >= 1  # fmt: skip
    assert _sample(text, 'gossamer_filter_failures_total{filter="default/boom-catalog",'
                         'phase="request"}') >= 1  # fmt: skip


def test_a_filter_missing_from_the_environment_is_refused_and_nothing_breaks(
    mesh: FilterMesh,
) -> None:
    broken = _filter("missing", "catalog", "no_such_module:Filter")
    with mesh.cp.client() as api:
        assert api.post("/v1/resources", json=broken).status_code == 200
        try:
            status = _wait_for_ack(api, "catalog", "NACK")
            assert "snapshot.inbound.filters[" in status["nack_error"]
            assert "no_such_module" in status["nack_error"]
            # The last good config still serves, filters and all.
            assert mesh.get("/", **{"x-tenant": "acme"}).headers["x-tenant-plan"] == "gold"
        finally:
            api.delete("/v1/resources/proxyfilter/default/missing")
        _wait_for_ack(api, "catalog", "ACK")


def _wait_for_ack(api: httpx.Client, service: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        items = [p for p in api.get("/v1/proxies").json()["items"] if p["service"] == service]
        if items and all(p["ack_state"] == state for p in items):
            return dict(items[0])
        assert time.monotonic() < deadline, f"{service} proxies not {state}: {items}"
        time.sleep(0.1)


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in the metrics:\n{text}")
