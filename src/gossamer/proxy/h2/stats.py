"""gRPC golden metrics: calls by ``grpc-status``, next to the HTTP request counters.

A gRPC call that fails usually still answers HTTP 200; what failed is in ``grpc-status``. The
proxy records the HTTP status in the route's ``RouteStats`` as for any request, and the gRPC
status here, in a counter that carries the same labels:
``gossamer_grpc_responses_total{direction,src_service,dst_service,peer_identity,grpc_status}``.
Slots are integer increments on the hot path; text is produced at scrape time. This module
imports no C binding, so rendering works in a sidecar that never saw HTTP/2.
"""

from __future__ import annotations

from gossamer.proxy.observe.metrics import Metrics, RouteStats

__all__ = ["GrpcMetrics", "grpc_metrics", "render_grpc_metrics"]


class GrpcMetrics:
    """Per-route counts of gRPC calls by status code, for one proxy's ``Metrics``."""

    __slots__ = ("_by_route",)

    def __init__(self) -> None:
        self._by_route: dict[RouteStats, dict[int, int]] = {}

    def record(self, stats: RouteStats, grpc_status: int) -> None:
        slot = self._by_route.get(stats)
        if slot is None:
            slot = self._by_route[stats] = {}
        slot[grpc_status] = slot.get(grpc_status, 0) + 1

    def count(self, stats: RouteStats, grpc_status: int) -> int:
        return self._by_route.get(stats, {}).get(grpc_status, 0)

    def render(self) -> str:
        if not self._by_route:
            return ""
        out = [
            "# HELP gossamer_grpc_responses_total gRPC calls completed, by grpc-status.",
            "# TYPE gossamer_grpc_responses_total counter",
        ]
        for stats, slot in self._by_route.items():
            for code, count in sorted(slot.items()):
                out.append(
                    f'gossamer_grpc_responses_total{{{stats.labels},grpc_status="{code}"}} {count}'
                )
        return "\n".join(out) + "\n"


def grpc_metrics(metrics: Metrics) -> GrpcMetrics:
    """The gRPC counters that belong with ``metrics`` (created on first use)."""
    found: GrpcMetrics | None = metrics.grpc
    if found is None:
        found = metrics.grpc = GrpcMetrics()
    return found


def render_grpc_metrics(metrics: Metrics) -> bytes:
    """The Prometheus text of the gRPC counters of ``metrics`` (empty when none)."""
    found: GrpcMetrics | None = metrics.grpc
    return found.render().encode() if found is not None else b""
