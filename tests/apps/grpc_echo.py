"""A gRPC app for tests: every unary call is answered with the call's metadata as JSON.

Usage: python tests/apps/grpc_echo.py PORT NAME
"""

from __future__ import annotations

import json
import sys
from concurrent import futures
from typing import Any

import grpc


def main() -> None:
    port, name = int(sys.argv[1]), sys.argv[2]

    def echo(request: bytes, context: Any) -> bytes:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        context.set_trailing_metadata((("x-served-by", name),))
        return json.dumps({"instance": name, "metadata": metadata}).encode()

    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {"Meta": grpc.unary_unary_rpc_method_handler(echo)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
