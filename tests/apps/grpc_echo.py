"""A gRPC app for tests (service ``test.Echo``, no .proto: raw bytes in and out).

- ``Meta`` (unary): the call's metadata as JSON (the caller's identity among it);
- ``Count`` (server streaming): the request is a number N; answers ``item0`` .. ``itemN-1``;
- ``Slow`` (unary): sleeps as many seconds as the request says, then answers ``late``;
- ``Flaky`` (unary): every odd call of this process fails with UNAVAILABLE, every even one
  answers its call number (a retry policy on ``unavailable`` makes every call succeed).

Usage: python tests/apps/grpc_echo.py PORT NAME
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc


def main() -> None:
    port, name = int(sys.argv[1]), sys.argv[2]
    flaky_calls = itertools.count(1)
    lock = threading.Lock()

    def meta(request: bytes, context: Any) -> bytes:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        context.set_trailing_metadata((("x-served-by", name),))
        return json.dumps({"instance": name, "metadata": metadata}).encode()

    def count(request: bytes, context: Any) -> Iterator[bytes]:
        for i in range(int(request or b"0")):
            yield b"item%d" % i

    def slow(request: bytes, context: Any) -> bytes:
        time.sleep(min(float(request or b"0"), 30.0))
        return b"late"

    def flaky(request: bytes, context: Any) -> bytes:
        with lock:
            n = next(flaky_calls)
        if n % 2:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"call {n} fails")
        return str(n).encode()

    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Meta": grpc.unary_unary_rpc_method_handler(meta),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
            "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
