"""The orders service: ``GET /orders/recent`` lists recent orders and asks payments for status."""

from __future__ import annotations

import sys

from gossamer.demo.common import (
    DependencyError,
    Request,
    Response,
    fetch_json,
    instance_name,
    json_response,
    main,
)

PAYMENTS_URL = "http://payments/payments/status"
RECENT = (
    {"id": "ord-1001", "sku": "silk-001", "quantity": 1, "state": "shipped"},
    {"id": "ord-1002", "sku": "thread-003", "quantity": 4, "state": "paid"},
)


def recent(request: Request) -> Response:
    body: dict[str, object] = {
        "service": "orders",
        "instance": instance_name("orders"),
        "caller_identity": request.peer_identity,
        "orders": list(RECENT),
    }
    try:
        body["payments"] = fetch_json(PAYMENTS_URL, headers=request.passed_on())
    except DependencyError as exc:
        body["payments_error"] = str(exc)
    return json_response(body)


ROUTES = {"/orders/recent": recent}

if __name__ == "__main__":
    sys.exit(main("orders", ROUTES))
