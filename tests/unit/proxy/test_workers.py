"""Multi-process sidecar pieces without processes: metrics merging, the channel framing, port
reservation, the worker's certificate reload and the supervisor's snapshot handling."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from gossamer.identity.credentials import Credentials
from gossamer.proxy.process.settings import Address, ProxySettings
from gossamer.proxy.workers.channel import BlockingChannel, encode, read_frame
from gossamer.proxy.workers.child import WorkerCredentials
from gossamer.proxy.workers.metrics_merge import merge, parse_exposition, render_exposition
from gossamer.proxy.workers.ports import reserve
from gossamer.proxy.workers.supervisor import Supervisor, _SupervisedCredentials
from tests.sidecar_harness import handshake
from tests.unit.identity import ca_helpers
from tests.unit.proxy.test_routing import make_snapshot

WORKER_A = """\
# HELP gossamer_requests_total HTTP requests handled, by response status code.
# TYPE gossamer_requests_total counter
gossamer_requests_total{direction="inbound",peer_identity="none",code="200"} 3
# HELP gossamer_request_duration_seconds Time from request head to response head.
# TYPE gossamer_request_duration_seconds histogram
gossamer_request_duration_seconds_bucket{code="200",le="0.001"} 2
gossamer_request_duration_seconds_bucket{code="200",le="+Inf"} 3
gossamer_request_duration_seconds_sum{code="200"} 0.001500000
gossamer_request_duration_seconds_count{code="200"} 3
# HELP gossamer_tcp_connections_open Downstream connections currently open.
# TYPE gossamer_tcp_connections_open gauge
gossamer_tcp_connections_open{direction="inbound"} 1
"""
WORKER_B = """\
# HELP gossamer_requests_total HTTP requests handled, by response status code.
# TYPE gossamer_requests_total counter
gossamer_requests_total{direction="inbound",peer_identity="none",code="200"} 4
gossamer_requests_total{direction="inbound",peer_identity="none",code="503"} 1
# HELP gossamer_request_duration_seconds Time from request head to response head.
# TYPE gossamer_request_duration_seconds histogram
gossamer_request_duration_seconds_bucket{code="200",le="0.001"} 1
gossamer_request_duration_seconds_bucket{code="200",le="+Inf"} 4
gossamer_request_duration_seconds_sum{code="200"} 0.002500000
gossamer_request_duration_seconds_count{code="200"} 4
# HELP gossamer_tcp_connections_open Downstream connections currently open.
# TYPE gossamer_tcp_connections_open gauge
gossamer_tcp_connections_open{direction="inbound"} 2
# HELP gossamer_grpc_responses_total gRPC calls completed, by grpc-status.
# TYPE gossamer_grpc_responses_total counter
gossamer_grpc_responses_total{grpc_status="0"} 7
"""
OK_200 = 'gossamer_requests_total{direction="inbound",peer_identity="none",code="200"}'


def _settings(tmp_path: Path, **extra: str) -> ProxySettings:
    env = {
        "GOSSAMER_PROXY_SERVICE": "catalog",
        "GOSSAMER_PROXY_WORKDIR": str(tmp_path / "work"),
        "GOSSAMER_PROXY_WORKERS": "2",
        **extra,
    }
    return ProxySettings.from_env(env)


class TestMetricsMerge:
    def test_same_series_add_up(self) -> None:
        """Samples with the same name and labels are summed across workers."""
        merged = merge([parse_exposition(WORKER_A), parse_exposition(WORKER_B)])
        samples = merged["gossamer_requests_total"].samples
        assert samples[OK_200] == 7
        assert samples[OK_200.replace('"200"', '"503"')] == 1

    def test_histograms_add_bucket_by_bucket(self) -> None:
        """Histogram buckets, counts and (float) sums add up."""
        merged = merge([parse_exposition(WORKER_A), parse_exposition(WORKER_B)])
        hist = merged["gossamer_request_duration_seconds"].samples
        assert hist['gossamer_request_duration_seconds_bucket{code="200",le="0.001"}'] == 3
        assert hist['gossamer_request_duration_seconds_count{code="200"}'] == 7
        assert hist['gossamer_request_duration_seconds_sum{code="200"}'] == pytest.approx(0.004)

    def test_rendering_groups_each_family_once(self) -> None:
        """Each family's HELP/TYPE appears once, before all of its samples, in first-seen order."""
        text = render_exposition(
            merge([parse_exposition(WORKER_A), parse_exposition(WORKER_B)])
        ).decode()
        lines = text.splitlines()
        assert lines.count("# TYPE gossamer_requests_total counter") == 1
        type_at = lines.index("# TYPE gossamer_requests_total counter")
        sample_at = [i for i, line in enumerate(lines) if line.startswith("gossamer_requests_")]
        assert all(type_at < i < type_at + 4 for i in sample_at)
        assert text.index("gossamer_grpc_responses_total") > text.index("connections_open")
        assert parse_exposition(text)["gossamer_requests_total"].samples[OK_200] == 7

    def test_retired_worker_keeps_counters_not_gauges(self) -> None:
        """What a dead worker leaves behind holds its counters and histograms, no gauges."""
        retired = merge([parse_exposition(WORKER_A)], monotonic_only=True)
        assert "gossamer_tcp_connections_open" not in retired
        assert retired["gossamer_requests_total"].samples[OK_200] == 3
        assert "gossamer_request_duration_seconds" in retired


class TestChannel:
    def test_frames_round_trip_and_eof_is_none(self) -> None:
        """A frame written is read back whole; a closed peer reads as None."""

        async def run() -> list[dict[str, Any] | None]:
            here, there = socket.socketpair()
            reader, writer = await asyncio.open_unix_connection(sock=here)
            _, sender = await asyncio.open_unix_connection(sock=there)
            big = {"type": "snapshot", "snapshot": {"blob": "x" * 300_000}}
            sender.write(encode(big) + encode({"type": "drain"}))  # flushed while we read
            out = [await read_frame(reader), await read_frame(reader)]
            sender.close()
            out.append(await read_frame(reader))
            writer.close()
            return out

        first, second, third = asyncio.run(run())
        assert first is not None and len(first["snapshot"]["blob"]) == 300_000
        assert second == {"type": "drain"}
        assert third is None

    def test_blocking_receive_skips_late_replies(self) -> None:
        """A reply to an earlier request is skipped; the one asked for is returned."""
        here, there = socket.socketpair()
        channel = BlockingChannel(here)
        there.sendall(encode({"type": "metrics", "id": 1}) + encode({"type": "metrics", "id": 2}))
        reply = channel.receive(time.monotonic() + 1, 2)
        assert reply == {"type": "metrics", "id": 2}
        channel.close()
        there.close()

    def test_blocking_receive_times_out_and_keeps_partial_frame(self) -> None:
        """A reply that misses the deadline is None; its bytes stay for the next call."""
        here, there = socket.socketpair()
        channel = BlockingChannel(here)
        frame = encode({"type": "metrics", "id": 5})
        there.sendall(frame[:3])
        assert channel.receive(time.monotonic() + 0.05, 5) is None
        there.sendall(frame[3:])
        assert channel.receive(time.monotonic() + 1, 5) == {"type": "metrics", "id": 5}
        there.close()
        assert channel.receive(time.monotonic() + 1, 6) is None
        assert channel.broken
        channel.close()


class TestReserve:
    def test_port_zero_becomes_a_held_port_workers_can_share(self) -> None:
        """Port 0 resolves to a port that SO_REUSEPORT listeners share and others cannot take."""
        hold, bound = reserve(Address("127.0.0.1", 0))
        listeners = []
        try:
            assert bound.port != 0
            for _ in range(2):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(("127.0.0.1", bound.port))
                sock.listen(8)
                listeners.append(sock)
            with socket.socket() as other, pytest.raises(OSError):
                other.bind(("127.0.0.1", bound.port))
        finally:
            hold.close()
            for sock in listeners:
                sock.close()

    def test_a_port_in_use_is_refused(self) -> None:
        """A port some other socket listens on is not quietly shared."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            with pytest.raises(OSError):
                reserve(Address("127.0.0.1", busy.getsockname()[1]))

    def test_held_port_alone_refuses_connections(self) -> None:
        """The supervisor's held socket never listens, so it takes no connections."""
        hold, bound = reserve(Address("127.0.0.1", 0))
        try:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", bound.port), timeout=1).close()
        finally:
            hold.close()


def _install(creds: Credentials, ca: ca_helpers.FakeCA, tmp_path: Path, lifetime: float) -> None:
    cert, key = ca.issue(ca_helpers.workload_id("catalog"), lifetime=lifetime)
    key_path = tmp_path / f"incoming-{lifetime}.key"
    key_path.write_bytes(key)
    creds.install(cert, key_path, ca.root_pem)


class TestWorkerCredentials:
    def test_reload_follows_installs_in_the_same_contexts(self, tmp_path: Path) -> None:
        """Each reload after an install adopts the new certificate in the same contexts."""
        ca = ca_helpers.FakeCA()
        supervisor_side = Credentials(tmp_path / "work")
        worker = WorkerCredentials(tmp_path / "work", None)
        assert worker.reload() is False and not worker.ready
        contexts = (worker.server_context, worker.client_context)
        _install(supervisor_side, ca, tmp_path, 3600)
        assert worker.reload() is True and worker.ready
        first = worker.expires_at
        _install(supervisor_side, ca, tmp_path, 7200)
        assert worker.reload() is True
        assert worker.expires_at == supervisor_side.expires_at and worker.expires_at != first
        assert (worker.server_context, worker.client_context) == contexts
        assert worker.server_context.get_ca_certs()

    def test_mismatched_key_keeps_the_old_certificate(self, tmp_path: Path) -> None:
        """A certificate whose key is not (yet) in place is refused; the old one stays."""
        ca = ca_helpers.FakeCA()
        supervisor_side = Credentials(tmp_path / "work")
        _install(supervisor_side, ca, tmp_path, 3600)
        worker = WorkerCredentials(tmp_path / "work", None)
        assert worker.reload()
        before = worker.expires_at
        other_cert, _ = ca.issue(ca_helpers.workload_id("catalog"), lifetime=9000)
        (tmp_path / "work" / "tls.crt").write_bytes(other_cert)
        assert worker.reload() is False
        assert worker.expires_at == before

    def test_alpn_context_follows_reloads_in_place(self, tmp_path: Path) -> None:
        """None before a certificate; then one context per protocol, renewed by ``reload``."""
        ca = ca_helpers.FakeCA()
        supervisor_side = Credentials(tmp_path / "work")
        worker = WorkerCredentials(tmp_path / "work", None)
        worker.reload()
        assert worker.alpn_client_context("h2") is None
        _install(supervisor_side, ca, tmp_path, 3600)
        worker.reload()
        ctx = worker.alpn_client_context("h2")
        assert ctx is not None and worker.alpn_client_context("h2") is ctx
        assert ctx.get_ca_certs()
        server = supervisor_side.server_context
        server.set_alpn_protocols(["h2"])
        alpn, before = handshake(ctx, server)
        assert alpn == "h2"
        _install(supervisor_side, ca, tmp_path, 7200)
        worker.reload()
        assert worker.alpn_client_context("h2") is ctx
        assert handshake(ctx, server)[1] != before

    def test_never_touches_pending_keys(self, tmp_path: Path) -> None:
        """A worker starting during a renewal leaves the supervisor's pending key alone."""
        workdir = tmp_path / "work"
        workdir.mkdir()
        pending = workdir / "pending-abc.key"
        pending.write_bytes(b"key")
        WorkerCredentials(workdir, None).reload()
        assert pending.exists()


class TestSupervisor:
    def _supervisor(self, tmp_path: Path, **extra: str) -> Supervisor:
        settings = _settings(tmp_path, **extra)
        return Supervisor(settings, _SupervisedCredentials(settings.identity.workdir), "INFO")

    def test_bad_snapshot_is_refused_and_not_forwarded(self, tmp_path: Path) -> None:
        """A snapshot that does not compile raises (NACK) and nothing goes to the workers."""

        async def run() -> Supervisor:
            supervisor = self._supervisor(tmp_path)
            bad = make_snapshot()
            bad["outbound"]["services"][0]["endpoints"] = "nope"
            with pytest.raises(Exception, match="endpoints"):
                supervisor.apply_snapshot(12, bad)
            return supervisor

        supervisor = asyncio.run(run())
        assert supervisor.version is None
        assert supervisor._snapshot is None

    def test_good_snapshot_is_kept_for_workers(self, tmp_path: Path) -> None:
        """A snapshot that compiles becomes the version every worker must apply."""

        async def run() -> Supervisor:
            supervisor = self._supervisor(tmp_path)
            supervisor.apply_snapshot(12, make_snapshot())
            return supervisor

        supervisor = asyncio.run(run())
        assert supervisor.version == 12
        assert supervisor._snapshot is not None and supervisor._snapshot[0] == 12
        ready, reason = supervisor.readiness()
        assert not ready and "certificate" in reason

    def test_subscriptions_include_upstreams_and_worker_requests(self, tmp_path: Path) -> None:
        """Hellos carry TCP upstreams and every service a worker asked about."""

        async def run() -> list[str]:
            supervisor = self._supervisor(tmp_path, GOSSAMER_PROXY_UPSTREAMS="db=0")
            supervisor._requested.add("orders.shop")
            return supervisor.subscriptions()

        assert asyncio.run(run()) == ["db.default", "orders.shop"]


def test_worker_contexts_require_peer_certificates(tmp_path: Path) -> None:
    """Both worker contexts verify the peer, like the one-process sidecar's."""
    worker = WorkerCredentials(tmp_path, None)
    assert worker.server_context.verify_mode == ssl.CERT_REQUIRED
    assert worker.client_context.verify_mode == ssl.CERT_REQUIRED
    assert worker.client_context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_points_in_time_are_not_added_up_across_workers() -> None:
    """Every worker reports when the same certificates expire: the merge keeps the latest
    figure of a ``*_timestamp_seconds`` family instead of a sum."""
    from gossamer.proxy.observe.metrics import render_expiries
    from gossamer.proxy.workers.metrics_merge import merge, parse_exposition, render_exposition

    first = render_expiries([("workload", "", 1000.0), ("root", "0", 5000.0)]).decode()
    second = render_expiries([("workload", "", 1200.0), ("root", "0", 5000.0)]).decode()
    merged = render_exposition(merge([parse_exposition(first), parse_exposition(second)]))
    text = merged.decode()
    assert 'gossamer_certificate_expiry_timestamp_seconds{certificate="workload"} 1200' in text
    assert 'gossamer_certificate_expiry_timestamp_seconds{certificate="root",root="0"} 5000' in text
