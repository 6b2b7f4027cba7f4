"""The payments service: ``GET /payments/status`` says whether payments can be taken."""

from __future__ import annotations

import sys

from gossamer.demo.common import Request, Response, instance_name, json_response, main


def status(request: Request) -> Response:
    return json_response({
        "service": "payments",
        "instance": instance_name("payments"),
        "caller_identity": request.peer_identity,
        "status": "accepting payments",
        "provider": "demo-pay",
    })


ROUTES = {"/payments/status": status}

if __name__ == "__main__":
    sys.exit(main("payments", ROUTES))
