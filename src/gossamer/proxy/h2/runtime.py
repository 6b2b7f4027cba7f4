"""What one sidecar's HTTP/2 path shares: its pools, its ALPN client context, its gRPC counters,
and the stream accounts of its services' connection limits (``limits``), which outlive
snapshots.

``runtime_for(state)`` returns the ``H2Runtime`` of a ``ProxyState``, made on first use (the
first HTTP/2 connection), so a sidecar that never sees HTTP/2 never loads the C binding. The
outbound pool speaks h2 over mTLS to other sidecars with the credentials' context offering ALPN
``h2`` (``state.credentials.alpn_client_context("h2")``, renewed in place; with no certificate
yet, or no credentials at all, a new connection fails as ``connect-failed``); the app pool
speaks h2c to the local application. ``close_h2(state)`` closes both (graceful GOAWAY) at
shutdown and does nothing when HTTP/2 was never used.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from gossamer.proxy.h2.limits import StreamAccount
from gossamer.proxy.h2.stats import GrpcMetrics, grpc_metrics
from gossamer.proxy.h2.upstream import H2Pool

if TYPE_CHECKING:
    from gossamer.proxy.state import ProxyState

__all__ = ["H2Runtime", "close_h2", "runtime_for"]


class H2Runtime:
    def __init__(self, state: ProxyState) -> None:
        credentials = state.credentials

        def tls() -> ssl.SSLContext | None:
            return None if credentials is None else credentials.alpn_client_context("h2")

        self.outbound_pool = H2Pool(tls)
        self.app_pool = H2Pool()
        self.egress_pool = H2Pool()  # h2c to hosts outside the mesh (snapshot/egress.py)
        self.grpc: GrpcMetrics = grpc_metrics(state.metrics)
        self.accounts: dict[str, StreamAccount] = {}

    def account(self, service_key: str) -> StreamAccount:
        """The stream account of a service (``name.namespace``), made on first use."""
        account = self.accounts.get(service_key)
        if account is None:
            account = self.accounts[service_key] = StreamAccount()
        return account

    def close(self) -> None:
        self.outbound_pool.close_all()
        self.app_pool.close_all()


def runtime_for(state: ProxyState) -> H2Runtime:
    runtime: H2Runtime | None = state.h2_runtime
    if runtime is None:
        runtime = state.h2_runtime = H2Runtime(state)
    return runtime


def close_h2(state: ProxyState) -> None:
    """Close the HTTP/2 pools of ``state`` (no-op when it never used HTTP/2)."""
    runtime: H2Runtime | None = state.h2_runtime
    if runtime is not None:
        runtime.close()
