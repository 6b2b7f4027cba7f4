"""A plain gRPC server (grpcio) for the README's tour: it knows nothing about the mesh.

``demo.Greeter/Hello`` answers ``hello <name>`` and who called (the caller's SPIFFE ID, from
the ``x-gossamer-peer-identity`` metadata its sidecar adds). Messages are UTF-8 text, so no
``.proto`` file or generated code is needed. Listens on ``$PORT`` (``gossamer run --port``).
"""

from __future__ import annotations

import os
from concurrent import futures
from typing import Any

import grpc


def hello(request: bytes, context: Any) -> bytes:
    caller = dict(context.invocation_metadata()).get("x-gossamer-peer-identity", "nobody")
    return f"hello {request.decode()} (you are {caller})".encode()


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "demo.Greeter", {"Hello": grpc.unary_unary_rpc_method_handler(hello)}),))
    server.add_insecure_port(f"127.0.0.1:{os.environ.get('PORT', '50051')}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
