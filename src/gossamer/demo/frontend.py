"""The frontend: ``GET /`` builds the store page from catalog and orders (which asks payments).

A failing dependency becomes an error box on a page that still renders (200, header
``x-demo-degraded`` names what failed); only when every dependency fails is the answer 502.
"""

from __future__ import annotations

import sys
from html import escape
from typing import Any

from gossamer.demo.common import (
    DependencyError,
    Request,
    Response,
    fetch_json,
    instance_name,
    main,
)

CATALOG_URL = "http://catalog/items"
ORDERS_URL = "http://orders/orders/recent"
# Headers a route may match on, passed from the page's request to the calls it makes. The mesh
# routes each hop on what that hop carries: passing them on is the app's part, as with trace
# context (this demo passes the canary header of examples/traffic/canary.yaml, and the trace
# headers, common.TRACE_HEADERS).
PROPAGATED = ("x-canary",)

_STYLE = (
    "body{font-family:sans-serif;max-width:46em;margin:2em auto;color:#222}"
    "section{border:1px solid #ccc;border-radius:6px;padding:.5em 1em;margin:1em 0}"
    ".error{border-color:#c33;background:#fee}.meta{color:#777;font-size:.85em}"
)


def _meta(data: dict[str, Any]) -> str:
    return (f'<p class="meta">answered by {escape(str(data.get("instance")))}; it saw caller '
            f'{escape(str(data.get("caller_identity") or "(no identity)"))}</p>')


def _error_box(title: str, message: str) -> str:
    return f'<section class="error"><h2>{escape(title)}</h2><p>{escape(message)}</p></section>'


def _catalog_html(data: dict[str, Any]) -> str:
    rows = "".join(f"<li>{escape(str(i['name']))} ({escape(str(i['sku']))}): "
                   f"${float(i['price']):.2f}</li>" for i in data.get("items", []))
    return f"<section><h2>Catalog</h2><ul>{rows}</ul>{_meta(data)}</section>"


def _orders_html(data: dict[str, Any]) -> str:
    rows = "".join(f"<li>{escape(str(o['id']))}: {o['quantity']} x {escape(str(o['sku']))}, "
                   f"{escape(str(o['state']))}</li>" for o in data.get("orders", []))
    payments = data.get("payments")
    if isinstance(payments, dict):
        pay = (f"<section><h2>Payments</h2><p>payments: {escape(str(payments.get('status')))} "
               f"via {escape(str(payments.get('provider')))}</p>{_meta(payments)}</section>")
    else:
        pay = _error_box("Payments unavailable", str(data.get("payments_error", "no answer")))
    return f"<section><h2>Recent orders</h2><ul>{rows}</ul>{_meta(data)}{pay}</section>"


def index(request: Request) -> Response:
    parts: list[str] = []
    failed: list[str] = []
    degraded: list[str] = []
    passed = request.passed_on(*PROPAGATED)
    for name, url, render in (("catalog", CATALOG_URL, _catalog_html),
                              ("orders", ORDERS_URL, _orders_html)):
        try:
            data = fetch_json(url, headers=passed)
            parts.append(render(data))
            if name == "orders" and not isinstance(data.get("payments"), dict):
                degraded.append("payments")
        except DependencyError as exc:
            failed.append(name)
            parts.append(_error_box(f"{name.capitalize()} unavailable", str(exc)))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Gossamer storefront</title>"
        f"<style>{_STYLE}</style></head><body><h1>Gossamer storefront</h1>"
        f'<p class="meta">page by {escape(instance_name("frontend"))}; it saw caller '
        f"{escape(request.peer_identity or '(no identity)')}</p>"
        + "".join(parts) + "</body></html>\n"
    )
    status = 502 if len(failed) == 2 else 200
    degraded = failed + degraded
    headers = {"x-demo-degraded": ",".join(degraded)} if degraded else {}
    return Response(status, page.encode(), "text/html; charset=utf-8", headers)


ROUTES = {"/": index}

if __name__ == "__main__":
    sys.exit(main("frontend", ROUTES))
