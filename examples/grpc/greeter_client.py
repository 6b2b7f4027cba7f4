"""A plain gRPC client (grpcio) for the README's tour: a channel to ``greeter:80`` and nothing
that knows about the mesh. Under ``gossamer run`` grpcio finds the sidecar in ``grpc_proxy``
and opens a CONNECT tunnel through it; the call then crosses the mesh with mTLS.
"""

from __future__ import annotations

import sys

import grpc

with grpc.insecure_channel("greeter:80") as channel:
    hello = channel.unary_unary("/demo.Greeter/Hello")
    print(hello((sys.argv[1] if len(sys.argv) > 1 else "world").encode(), timeout=10).decode())
