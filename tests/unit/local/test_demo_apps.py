"""The storefront demo apps, wired through a fake forward proxy that plays the mesh."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

from gossamer.demo import catalog, frontend, orders, payments
from gossamer.demo.common import DependencyError, Request, fetch_json, make_server


class FakeMesh:
    """A forward proxy: routes ``GET http://<service>/path`` to the demo route tables."""

    def __init__(self) -> None:
        self.services: dict[str, Mapping[str, Any]] = {
            "catalog": catalog.ROUTES, "orders": orders.ROUTES, "payments": payments.ROUTES}
        self.down: set[str] = set()
        mesh = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                host = url.hostname or ""
                routes = mesh.services.get(host)
                if host in mesh.down or routes is None:
                    self.send_response(503)
                    self.send_header("x-gossamer-error", "no-healthy-endpoints")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                answer = routes[url.path](Request(url.path, {
                    "x-gossamer-peer-identity": "spiffe://gossamer.local/ns/default/sa/test"}))
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def mesh(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMesh]:
    fake = FakeMesh()
    fake.thread.start()
    monkeypatch.setenv("HTTP_PROXY", fake.url)
    monkeypatch.setenv("http_proxy", fake.url)
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("no_proxy", "")
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


def _page() -> tuple[int, str, dict[str, str]]:
    answer = frontend.index(Request("/", {}))
    return answer.status, answer.body.decode(), dict(answer.headers)


def test_page_shows_catalog_orders_and_payments(mesh: FakeMesh) -> None:
    """With every service up the page has items, orders and the payments status."""
    status, page, headers = _page()
    assert status == 200
    assert "Spider-silk scarf" in page and "ord-1001" in page
    assert "accepting payments" in page
    assert "spiffe://gossamer.local/ns/default/sa/test" in page
    assert "x-demo-degraded" not in headers


def test_catalog_down_still_renders_with_an_error_box(mesh: FakeMesh) -> None:
    """A failed catalog gives 200, an error box naming the cause, and the degraded header."""
    mesh.down.add("catalog")
    status, page, headers = _page()
    assert status == 200
    assert 'class="error"' in page and "no-healthy-endpoints" in page
    assert "ord-1001" in page
    assert headers["x-demo-degraded"] == "catalog"


def test_payments_down_is_shown_inside_orders(mesh: FakeMesh) -> None:
    """orders reports the payments failure; the frontend marks payments as degraded."""
    mesh.down.add("payments")
    status, page, headers = _page()
    assert status == 200
    assert "Payments unavailable" in page and "Spider-silk scarf" in page
    assert headers["x-demo-degraded"] == "payments"


def test_everything_down_is_502(mesh: FakeMesh) -> None:
    """Only when catalog and orders both fail does the frontend answer 502."""
    mesh.down.update({"catalog", "orders"})
    status, _, headers = _page()
    assert status == 502
    assert headers["x-demo-degraded"] == "catalog,orders"


def test_fetch_json_reports_the_proxy_error_header(mesh: FakeMesh) -> None:
    """A mesh-generated error keeps its x-gossamer-error cause in the message."""
    mesh.down.add("orders")
    with pytest.raises(DependencyError, match=r"503 \(no-healthy-endpoints\)"):
        fetch_json("http://orders/orders/recent")


def test_server_answers_healthz_and_404() -> None:
    """Every app answers /healthz; unknown paths are a JSON 404."""
    server = make_server(catalog.ROUTES, 0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(base + "/healthz", timeout=5) as answer:
            assert answer.read() == b"ok\n"
        with opener.open(base + "/items", timeout=5) as answer:
            assert json.loads(answer.read())["service"] == "catalog"
        with pytest.raises(urllib.error.HTTPError) as info:
            opener.open(base + "/nope", timeout=5)
        assert info.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
