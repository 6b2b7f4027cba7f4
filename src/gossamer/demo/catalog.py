"""The catalog service: ``GET /items`` lists what the store sells."""

from __future__ import annotations

import sys

from gossamer.demo.common import Request, Response, instance_name, json_response, main

ITEMS = (
    {"sku": "silk-001", "name": "Spider-silk scarf", "price": 49.0},
    {"sku": "loom-002", "name": "Hand loom", "price": 120.0},
    {"sku": "thread-003", "name": "Gossamer thread (100 m)", "price": 7.5},
)


def items(request: Request) -> Response:
    return json_response({
        "service": "catalog",
        "instance": instance_name("catalog"),
        "caller_identity": request.peer_identity,
        "items": list(ITEMS),
    })


ROUTES = {"/items": items}

if __name__ == "__main__":
    sys.exit(main("catalog", ROUTES))
