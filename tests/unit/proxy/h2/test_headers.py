"""Header rules of the HTTP/2 path: request scan, generated errors, gRPC status."""

from __future__ import annotations

from gossamer.proxy.h2.headers import (
    error_body,
    error_headers,
    grpc_code_for_http,
    grpc_status_of,
    percent_encode,
    scan_request,
)
from gossamer.proxy.h2.stats import GrpcMetrics, grpc_metrics, render_grpc_metrics
from gossamer.proxy.observe.metrics import Metrics

PEER = b"x-gossamer-peer-identity"


def test_scan_drops_the_peer_identity_header_and_reads_routing_fields() -> None:
    """The forged identity header is dropped; authority, method, request id and gRPC found."""
    scan = scan_request(
        [
            (b":method", b"POST"), (b":authority", b"catalog"), (b":path", b"/x"),
            (PEER, b"spiffe://evil"), (b"content-type", b"application/grpc+proto"),
            (b"x-request-id", b"abc"),
        ],
        frozenset({PEER}),
    )  # fmt: skip
    assert PEER not in [name for name, _ in scan.kept]
    assert (scan.method, scan.authority, scan.request_id, scan.grpc) == (
        b"POST", b"catalog", b"abc", True,
    )


def test_scan_falls_back_to_host_without_authority() -> None:
    """A request with only a ``host`` header routes by it."""
    scan = scan_request([(b":method", b"GET"), (b"host", b"orders:80")], frozenset())
    assert scan.authority == b"orders:80"
    assert not scan.grpc


def test_grpc_error_is_trailers_only_with_mapped_status_and_cause() -> None:
    """A gRPC caller gets grpc-status (spec mapping), an encoded message and the cause."""
    headers = dict(error_headers(503, "no-healthy-endpoints", "catalog: 0%", request_id=b"r",
                                 grpc=True))  # fmt: skip
    assert headers[b":status"] == b"503"
    assert headers[b"grpc-status"] == b"14"
    assert headers[b"grpc-message"] == b"no-healthy-endpoints: catalog: 0%25"
    assert headers[b"x-gossamer-error"] == b"no-healthy-endpoints"
    assert headers[b"x-request-id"] == b"r"


def test_plain_error_has_text_body_and_cause_header() -> None:
    """A non-gRPC caller gets a text body naming status, cause and detail."""
    headers = dict(error_headers(404, "unknown-service", "", request_id=None, grpc=False))
    assert headers[b"x-gossamer-error"] == b"unknown-service"
    assert b"x-request-id" not in headers
    assert error_body(404, "unknown-service", "nosuch") == b"404 unknown-service: nosuch\n"


def test_grpc_status_is_read_from_trailers() -> None:
    """``grpc-status`` is found in a trailer block; junk or absence gives None."""
    assert grpc_status_of([(b"grpc-message", b"x"), (b"grpc-status", b"5")]) == 5
    assert grpc_status_of([(b"grpc-status", b"five")]) is None
    assert grpc_status_of([]) is None


def test_http_status_maps_to_grpc_codes_per_spec() -> None:
    """The gRPC spec's HTTP-to-gRPC mapping, with UNKNOWN for the rest."""
    assert [grpc_code_for_http(s) for s in (400, 401, 403, 404, 429, 502, 503, 504, 500)] == [
        13, 16, 7, 12, 14, 14, 14, 14, 2,
    ]


def test_percent_encoding_keeps_printable_ascii() -> None:
    """Printable ASCII passes, ``%`` and non-ASCII are escaped."""
    assert percent_encode("a b%é") == b"a b%25%C3%A9"


def test_grpc_metrics_render_with_route_labels() -> None:
    """Calls by grpc-status render as a counter carrying the route's labels."""
    metrics = Metrics("frontend", "default")
    stats = metrics.route("outbound", "frontend", "catalog", "spiffe://x")
    counters: GrpcMetrics = grpc_metrics(metrics)
    counters.record(stats, 0)
    counters.record(stats, 0)
    counters.record(stats, 14)
    text = render_grpc_metrics(metrics).decode()
    assert 'dst_service="catalog",peer_identity="spiffe://x",grpc_status="0"} 2' in text
    assert 'grpc_status="14"} 1' in text
    assert render_grpc_metrics(Metrics("other", "default")) == b""


def test_scan_drops_a_host_that_is_not_the_authority() -> None:
    """``:authority`` routes; a ``host`` naming another destination is not forwarded, so the
    app cannot be told a different one (found by tests/integration/test_differential.py)."""
    scan = scan_request(
        [(b":method", b"GET"), (b":authority", b"catalog"), (b":path", b"/"),
         (b"host", b"evil.example"), (b"accept", b"*/*")],
        frozenset(),
    )  # fmt: skip
    assert scan.authority == b"catalog"
    assert scan.kept == [(b":method", b"GET"), (b":authority", b"catalog"), (b":path", b"/"),
                         (b"accept", b"*/*")]  # fmt: skip
    same = scan_request([(b":authority", b"Catalog"), (b"host", b"catalog")], frozenset())
    assert (b"host", b"catalog") in same.kept
