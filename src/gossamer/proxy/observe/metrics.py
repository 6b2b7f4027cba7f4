"""Golden metrics of one sidecar: request counts and latency histograms, rendered at scrape time.

The hot path only does integer arithmetic on preallocated slots: a ``RouteStats`` is looked up
once per route (outbound service) or per inbound connection (peer identity), and each finished
request adds to the slot of its status code. Rendering to the Prometheus text format happens
only when ``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gossamer.proxy.snapshot.authorization import Decision


__all__ = [
    "LATENCY_BUCKETS_MS",
    "AccessLogCounts",
    "AuditCounts",
    "Metrics",
    "RouteStats",
    "SpanCounts",
    "TcpStats",
    "render_access_log_counts",
    "render_audit_counts",
    "render_expiries",
    "render_span_counts",
]

class SpanCounts(Protocol):
    """What the span exporter counts (``observe/otlp.py``)."""

    exported: int
    dropped_full: int
    dropped_failed: int


class AccessLogCounts(Protocol):
    """What the access log writer counts (``observe/access_log.py``)."""

    written: int
    dropped_full: int
    dropped_failed: int


class AuditCounts(Protocol):
    """What the audit spool counts (``observe/audit_spool.py``)."""

    counts: dict[str, int]
    used: int
    limit: int


# Upper bounds in milliseconds (Linkerd-like spread from sub-millisecond to tens of seconds).
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000, 2000, 5000, 10000, 30000,
)  # fmt: skip
_BOUNDS_NS: tuple[int, ...] = tuple(int(ms * 1_000_000) for ms in LATENCY_BUCKETS_MS)
_NBUCKETS = len(_BOUNDS_NS) + 1  # the last one is +Inf
_BUCKET = "gossamer_request_duration_seconds_bucket"
# slot layout: [count, sum_ns, bucket_0, ..., bucket_inf]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class RouteStats:
    """Counters for one (direction, source, destination, peer identity) label set."""

    __slots__ = ("by_code", "labels")

    def __init__(self, labels: str) -> None:
        self.labels = labels  # pre-rendered label text, e.g. 'direction="outbound",...'
        self.by_code: dict[int, list[int]] = {}

    def record(self, code: int, elapsed_ns: int) -> None:
        slot = self.by_code.get(code)
        if slot is None:
            slot = self.by_code[code] = [0] * (2 + _NBUCKETS)
        slot[0] += 1
        slot[1] += elapsed_ns
        slot[2 + bisect_left(_BOUNDS_NS, elapsed_ns)] += 1


class TcpStats:
    """Counters of relayed TCP connections for one (direction, source, destination) label set:
    ``bytes[0]`` received from the client side, ``bytes[1]`` sent to it."""

    __slots__ = ("bytes", "connect_failures", "drained", "labels", "open", "opened")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.opened = 0
        self.open = 0
        self.drained = 0  # closed by a TCP route's drain deadline
        self.connect_failures = 0
        self.bytes = [0, 0]


class Metrics:
    """All metrics of one proxy process."""

    def __init__(self, service: str, namespace: str) -> None:
        self.service = service
        self.namespace = namespace
        self._routes: dict[tuple[str, str, str, str], RouteStats] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.connections_opened: dict[str, int] = {"inbound": 0, "outbound": 0}
        self.connections_open: dict[str, int] = {"inbound": 0, "outbound": 0}
        self.tls_handshake_failures = 0
        self._tcp: dict[tuple[str, str, str], TcpStats] = {}
        # Users' filters (gossamer.filters): what they count, and how often they raised.
        self.filter_events: dict[tuple[str, str], int] = {}
        self.filter_failures: dict[tuple[str, str], int] = {}
        # AuthorizationPolicy decisions (pipeline.authorize, tcp.proxy): (policy, decision).
        self.authz_decisions: dict[tuple[str, str], int] = {}
        # gossamer.proxy.h2.stats.GrpcMetrics, made there on first gRPC use (untyped here:
        # this module does not load the HTTP/2 path).
        self.grpc: Any = None

    def tcp(self, direction: str, src: str, dst: str) -> TcpStats:
        """The relayed-TCP counters for a label set; relays keep it and add to it."""
        key = (direction, src, dst)
        stats = self._tcp.get(key)
        if stats is None:
            labels = (
                f'direction="{direction}",src_service="{_escape(src)}",'
                f'dst_service="{_escape(dst)}"'
            )
            stats = self._tcp[key] = TcpStats(labels)
        return stats

    def route(self, direction: str, src: str, dst: str, peer_identity: str) -> RouteStats:
        """The stats object for a label set; callers keep it and call ``record`` per request."""
        key = (direction, src, dst, peer_identity)
        stats = self._routes.get(key)
        if stats is None:
            labels = (
                f'direction="{direction}",src_service="{_escape(src)}",'
                f'dst_service="{_escape(dst)}",peer_identity="{_escape(peer_identity)}"'
            )
            stats = self._routes[key] = RouteStats(labels)
        return stats

    def filter_event(self, name: str, event: str, n: int = 1) -> None:
        key = (name, event)
        self.filter_events[key] = self.filter_events.get(key, 0) + n

    def filter_failed(self, name: str, phase: str) -> None:
        key = (name, phase)
        self.filter_failures[key] = self.filter_failures.get(key, 0) + 1

    def authz(self, decision: Decision) -> None:
        """Count one authorization decision: ``(policy, allow|deny)`` (policy ``none``: no
        ALLOW policy matched) and ``(policy, audit)`` for each AUDIT policy that matched."""
        counts = self.authz_decisions
        for name in decision.audit:
            counts[(name, "audit")] = counts.get((name, "audit"), 0) + 1
        key = decision.counted
        if key is not None:
            counts[key] = counts.get(key, 0) + 1

    def error(self, direction: str, cause: str) -> None:
        key = (direction, cause)
        self.errors[key] = self.errors.get(key, 0) + 1

    def render(self) -> bytes:
        """The Prometheus text exposition (version 0.0.4) of everything recorded so far."""
        out: list[str] = [
            "# HELP gossamer_requests_total HTTP requests handled, by response status code.",
            "# TYPE gossamer_requests_total counter",
        ]
        routes = list(self._routes.values())
        for stats in routes:
            for code, slot in sorted(stats.by_code.items()):
                out.append(f'gossamer_requests_total{{{stats.labels},code="{code}"}} {slot[0]}')
        out += [
            "# HELP gossamer_request_duration_seconds Time from request head to response head.",
            "# TYPE gossamer_request_duration_seconds histogram",
        ]
        for stats in routes:
            for code, slot in sorted(stats.by_code.items()):
                labels = f'{stats.labels},code="{code}"'
                cumulative = 0
                for i, bound_ms in enumerate(LATENCY_BUCKETS_MS):
                    cumulative += slot[2 + i]
                    le = f"{bound_ms / 1000:g}"
                    out.append(f'{_BUCKET}{{{labels},le="{le}"}} {cumulative}')
                out.append(f'{_BUCKET}{{{labels},le="+Inf"}} {slot[0]}')
                out.append(f"gossamer_request_duration_seconds_sum{{{labels}}} {slot[1] / 1e9:.9f}")
                out.append(f"gossamer_request_duration_seconds_count{{{labels}}} {slot[0]}")
        out += [
            "# HELP gossamer_proxy_errors_total Responses the proxy generated itself, by cause.",
            "# TYPE gossamer_proxy_errors_total counter",
        ]
        for (direction, cause), count in sorted(self.errors.items()):
            out.append(
                f'gossamer_proxy_errors_total{{direction="{direction}",cause="{cause}"}} {count}'
            )
        out += _filter_families(self.filter_events, self.filter_failures)
        out += [
            "# HELP gossamer_authz_decisions_total AuthorizationPolicy decisions, by policy.",
            "# TYPE gossamer_authz_decisions_total counter",
        ]
        for (policy, decision), count in sorted(self.authz_decisions.items()):
            labels = f'policy="{_escape(policy)}",decision="{decision}"'
            out.append(f"gossamer_authz_decisions_total{{{labels}}} {count}")
        out += [
            "# HELP gossamer_tcp_connections_opened_total Downstream connections accepted.",
            "# TYPE gossamer_tcp_connections_opened_total counter",
        ]
        for direction, count in sorted(self.connections_opened.items()):
            out.append(f'gossamer_tcp_connections_opened_total{{direction="{direction}"}} {count}')
        out += [
            "# HELP gossamer_tcp_connections_open Downstream connections currently open.",
            "# TYPE gossamer_tcp_connections_open gauge",
        ]
        for direction, count in sorted(self.connections_open.items()):
            out.append(f'gossamer_tcp_connections_open{{direction="{direction}"}} {count}')
        out += _render_tcp(list(self._tcp.values()))
        out += [
            "# HELP gossamer_tls_handshake_failures_total Inbound TLS handshakes that failed.",
            "# TYPE gossamer_tls_handshake_failures_total counter",
            f"gossamer_tls_handshake_failures_total {self.tls_handshake_failures}",
        ]
        return ("\n".join(out) + "\n").encode()


_TCP_SERIES: tuple[tuple[str, str, str, Callable[[TcpStats], int]], ...] = (
    ("gossamer_tcp_relay_connections_total", "counter", "Relayed TCP connections opened.",
     lambda t: t.opened),
    ("gossamer_tcp_relay_connections_open", "gauge", "Relayed TCP connections open now.",
     lambda t: t.open),
    ("gossamer_tcp_relay_drained_total", "counter",
     "Relayed TCP connections closed by a TCP route's drain deadline.", lambda t: t.drained),
    ("gossamer_tcp_relay_connect_failures_total", "counter",
     "Relayed TCP connections that could not reach a backend.", lambda t: t.connect_failures),
    ("gossamer_tcp_relay_received_bytes_total", "counter",
     "Bytes relayed from the client side of TCP connections.", lambda t: t.bytes[0]),
    ("gossamer_tcp_relay_sent_bytes_total", "counter",
     "Bytes relayed to the client side of TCP connections.", lambda t: t.bytes[1]),
)  # fmt: skip


def _render_tcp(stats: list[TcpStats]) -> list[str]:
    out: list[str] = []
    for name, kind, help_text, value in _TCP_SERIES:
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        out += [f"{name}{{{t.labels}}} {value(t)}" for t in stats]
    return out


def _filter_families(
    events: dict[tuple[str, str], int], failures: dict[tuple[str, str], int]
) -> list[str]:
    """The users' filters' families (only when a filter counted or failed)."""
    out: list[str] = []
    if events:
        out += [
            "# HELP gossamer_filter_events_total What users' filters counted (context.count).",
            "# TYPE gossamer_filter_events_total counter",
        ]
        for (name, event), count in sorted(events.items()):
            labels = f'filter="{_escape(name)}",event="{_escape(event)}"'
            out.append(f"gossamer_filter_events_total{{{labels}}} {count}")
    if failures:
        out += [
            "# HELP gossamer_filter_failures_total Exceptions raised by users' filters, by phase.",
            "# TYPE gossamer_filter_failures_total counter",
        ]
        for (name, phase), count in sorted(failures.items()):
            labels = f'filter="{_escape(name)}",phase="{phase}"'
            out.append(f"gossamer_filter_failures_total{{{labels}}} {count}")
    return out


def render_expiries(expiries: list[tuple[str, str, float]]) -> bytes:
    """``gossamer_certificate_expiry_timestamp_seconds``: when the workload's certificate, each
    intermediate it came with and each root of its trust bundle expire, so that an alert fires
    long before (a root's or intermediate's expiry ends every certificate under it)."""
    if not expiries:
        return b""
    out = [
        "# HELP gossamer_certificate_expiry_timestamp_seconds When a certificate the sidecar "
        "relies on expires (its own, each intermediate, each trusted root).",
        "# TYPE gossamer_certificate_expiry_timestamp_seconds gauge",
    ]
    for kind, index, when in expiries:
        labels = f'certificate="{kind}"' + (f',{kind}="{index}"' if index else "")
        out.append(f"gossamer_certificate_expiry_timestamp_seconds{{{labels}}} {when:.0f}")
    return ("\n".join(out) + "\n").encode()


def render_span_counts(exporter: SpanCounts) -> bytes:
    """``gossamer_trace_spans_total{outcome}``: spans exported, and dropped because the
    export queue was full or the collector did not take them."""
    return (
        "# HELP gossamer_trace_spans_total Spans this sidecar recorded, by what became of them.\n"
        "# TYPE gossamer_trace_spans_total counter\n"
        f'gossamer_trace_spans_total{{outcome="exported"}} {exporter.exported}\n'
        f'gossamer_trace_spans_total{{outcome="dropped_queue_full"}} {exporter.dropped_full}\n'
        f'gossamer_trace_spans_total{{outcome="dropped_export_failed"}} '
        f"{exporter.dropped_failed}\n"
    ).encode()


def render_audit_counts(spool: AuditCounts) -> bytes:
    """``gossamer_audit_records_total{outcome}`` (written, dropped, refused) and the spool's
    bytes not yet acknowledged by the control plane, and its limit."""
    counts = spool.counts
    return (
        "# HELP gossamer_audit_records_total Audited requests, by what became of their record.\n"
        "# TYPE gossamer_audit_records_total counter\n"
        + "".join(f'gossamer_audit_records_total{{outcome="{outcome}"}} {counts[outcome]}\n'
                  for outcome in ("written", "dropped", "refused"))
        + "# HELP gossamer_audit_spool_bytes Bytes of the audit spool on disk (shipped segments "
        "are deleted; the one being written stays).\n"
        "# TYPE gossamer_audit_spool_bytes gauge\n"
        f"gossamer_audit_spool_bytes {spool.used}\n"
        "# HELP gossamer_audit_spool_limit_bytes The audit spool's limit (spec.audit.spoolSize).\n"
        "# TYPE gossamer_audit_spool_limit_bytes gauge\n"
        f"gossamer_audit_spool_limit_bytes {spool.limit}\n"
    ).encode()  # fmt: skip


def render_access_log_counts(writer: AccessLogCounts) -> bytes:
    """``gossamer_access_log_lines_total{outcome}``: lines written, and dropped because the
    queue was full or the write failed."""
    return (
        "# HELP gossamer_access_log_lines_total Access log lines, by what became of them.\n"
        "# TYPE gossamer_access_log_lines_total counter\n"
        f'gossamer_access_log_lines_total{{outcome="written"}} {writer.written}\n'
        f'gossamer_access_log_lines_total{{outcome="dropped_queue_full"}} {writer.dropped_full}\n'
        f'gossamer_access_log_lines_total{{outcome="dropped_write_failed"}} '
        f"{writer.dropped_failed}\n"
    ).encode()
