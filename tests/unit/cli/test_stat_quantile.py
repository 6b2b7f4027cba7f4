"""`gossamer stat`'s arithmetic (cli/stat.py) as logic: quantiles interpolated in histogram
buckets as Prometheus' histogram_quantile does, and counters taken as what changed between two
scrapes (a restarted sidecar's counters count from zero). The command itself runs against real
sidecars in tests/integration/test_prometheus.py."""

from __future__ import annotations

import math

from gossamer.cli.stat import _delta, quantile

LINE = ('gossamer_requests_total{direction="inbound",src_service="web",dst_service="orders",'
        'peer_identity="spiffe://x/ns/d/sa/web",code="%s"} %d')  # fmt: skip


def test_quantiles_are_interpolated_inside_their_bucket() -> None:
    buckets = {0.005: 40.0, 0.01: 90.0, 0.05: 100.0, math.inf: 100.0}
    assert quantile(0.5, buckets) == 0.005 + 0.005 * (10 / 50)
    p99 = quantile(0.99, buckets)
    assert p99 is not None and abs(p99 - (0.01 + 0.04 * 0.9)) < 1e-12
    assert quantile(0.9, {0.1: 10.0, math.inf: 20.0}) == 0.1  # the open bucket: its bound
    assert quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert quantile(0.5, {}) is None


def test_counts_are_what_changed_between_the_scrapes() -> None:
    before = {"a": LINE % ("200", 10) + "\n" + LINE % ("503", 2), "b": LINE % ("200", 50)}
    after = {"a": LINE % ("200", 25) + "\n" + LINE % ("503", 3), "b": LINE % ("200", 4)}
    requests, _ = _delta(before, after)
    by_code = {key[4]: value for key, value in requests.items()}
    assert by_code == {"200": 15 + 4, "503": 1}  # b restarted: its 4 count from zero
