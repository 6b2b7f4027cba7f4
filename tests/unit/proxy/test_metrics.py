"""Golden metrics: recording into latency buckets and the Prometheus text rendering."""

from __future__ import annotations

import re

from gossamer.proxy.observe.metrics import LATENCY_BUCKETS_MS, Metrics

MS = 1_000_000
SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: bytes) -> list[tuple[str, dict[str, str], str]]:
    """Every sample line of an exposition as (name, labels with escapes kept, value)."""
    out: list[tuple[str, dict[str, str], str]] = []
    for line in text.decode().splitlines():
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = dict(LABEL.findall(match["labels"] or ""))
        out.append((match["name"], labels, match["value"]))
    return out


def find(text: bytes, name: str, **want: str) -> list[tuple[dict[str, str], str]]:
    return [
        (labels, value)
        for n, labels, value in samples(text)
        if n == name and all(labels.get(k) == v for k, v in want.items())
    ]


def metrics_with_traffic() -> Metrics:
    metrics = Metrics("frontend", "default")
    stats = metrics.route("outbound", "frontend", "catalog", "spiffe://td/ns/default/sa/catalog")
    for elapsed_ms in (0.2, 0.5, 4, 4, 70, 40_000):
        stats.record(200, int(elapsed_ms * MS))
    stats.record(503, 2 * MS)
    return metrics


def test_requests_are_counted_per_status_code() -> None:
    """gossamer_requests_total has one sample per status code with its count."""
    text = metrics_with_traffic().render()
    counts = {labels["code"]: value for labels, value in find(text, "gossamer_requests_total")}
    assert counts == {"200": "6", "503": "1"}
    labels, _ = find(text, "gossamer_requests_total", code="200")[0]
    assert labels == {
        "direction": "outbound",
        "src_service": "frontend",
        "dst_service": "catalog",
        "peer_identity": "spiffe://td/ns/default/sa/catalog",
        "code": "200",
    }


def test_records_fall_into_the_first_bucket_at_or_above_them() -> None:
    """A latency equal to a bound counts in that bucket (``le`` is inclusive)."""
    metrics = Metrics("a", "default")
    stats = metrics.route("inbound", "a", "b", "id")
    stats.record(200, int(0.5 * MS))
    stats.record(200, int(0.5 * MS) + 1)
    text = metrics.render()
    buckets = {
        labels["le"]: int(value)
        for labels, value in find(text, "gossamer_request_duration_seconds_bucket")
    }
    assert buckets["0.0005"] == 1
    assert buckets["0.001"] == 2


def test_buckets_are_cumulative_and_inf_equals_count() -> None:
    """Bucket counts never decrease with ``le``, and the +Inf bucket equals _count."""
    text = metrics_with_traffic().render()
    rows = find(text, "gossamer_request_duration_seconds_bucket", code="200")
    les = [labels["le"] for labels, _ in rows]
    values = [int(value) for _, value in rows]
    assert les == [f"{ms / 1000:g}" for ms in LATENCY_BUCKETS_MS] + ["+Inf"]
    assert values == sorted(values)
    (count,) = find(text, "gossamer_request_duration_seconds_count", code="200")
    assert values[-1] == int(count[1]) == 6
    assert values[-2] == 5  # the 40 s request is above the largest finite bound
    by_le = dict(zip(les, values, strict=True))
    assert (by_le["0.0005"], by_le["0.005"], by_le["0.1"]) == (2, 4, 5)


def test_sum_is_in_seconds() -> None:
    """_sum is the total of recorded latencies in seconds."""
    text = metrics_with_traffic().render()
    (row,) = find(text, "gossamer_request_duration_seconds_sum", code="200")
    assert float(row[1]) == 40.0787


def test_label_values_are_escaped() -> None:
    """Quotes, backslashes and newlines in label values are escaped as the format requires."""
    metrics = Metrics("a", "default")
    metrics.route("outbound", 'we"ird', "back\\slash", "new\nline").record(200, MS)
    text = metrics.render()
    (labels, value) = find(text, "gossamer_requests_total")[0]
    assert labels["src_service"] == 'we\\"ird'
    assert labels["dst_service"] == "back\\\\slash"
    assert labels["peer_identity"] == "new\\nline"
    assert value == "1"
    assert all(SAMPLE.match(line) or line.startswith("#") for line in text.decode().splitlines())


def test_same_labels_give_the_same_stats_object() -> None:
    """``route`` returns one RouteStats per label set, so counts accumulate."""
    metrics = Metrics("a", "default")
    first = metrics.route("outbound", "a", "b", "id")
    assert metrics.route("outbound", "a", "b", "id") is first
    assert metrics.route("inbound", "a", "b", "id") is not first


def test_errors_are_counted_by_direction_and_cause() -> None:
    """Each proxy-generated error increments its (direction, cause) counter."""
    metrics = Metrics("a", "default")
    metrics.error("outbound", "unknown-service")
    metrics.error("outbound", "unknown-service")
    metrics.error("inbound", "mtls-required")
    text = metrics.render()
    rows = {
        (labels["direction"], labels["cause"]): value
        for labels, value in find(text, "gossamer_proxy_errors_total")
    }
    assert rows == {("outbound", "unknown-service"): "2", ("inbound", "mtls-required"): "1"}


def test_connection_and_tls_counters_are_rendered() -> None:
    """Connection counters per direction and TLS handshake failures appear in the output."""
    metrics = Metrics("a", "default")
    metrics.connections_opened["inbound"] += 3
    metrics.connections_open["inbound"] += 1
    metrics.tls_handshake_failures = 2
    text = metrics.render()
    assert find(text, "gossamer_tcp_connections_opened_total", direction="inbound")[0][1] == "3"
    assert find(text, "gossamer_tcp_connections_open", direction="inbound")[0][1] == "1"
    assert find(text, "gossamer_tls_handshake_failures_total")[0][1] == "2"


def test_every_family_has_help_and_type_before_its_samples() -> None:
    """Each metric family is introduced by HELP and TYPE lines, and output ends in a newline."""
    text = metrics_with_traffic().render().decode()
    assert text.endswith("\n")
    declared: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
        elif not line.startswith("#"):
            name = SAMPLE.match(line)["name"]  # type: ignore[index]
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            assert family in declared or name in declared, line
    assert "# HELP gossamer_requests_total" in text


def test_empty_metrics_render_without_samples_of_requests() -> None:
    """With nothing recorded there are no request samples, only zeroed connection counters."""
    text = Metrics("a", "default").render()
    assert find(text, "gossamer_requests_total") == []
    assert find(text, "gossamer_request_duration_seconds_bucket") == []
    assert find(text, "gossamer_tcp_connections_open", direction="outbound")[0][1] == "0"
