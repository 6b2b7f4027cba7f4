"""Traffic management across real sidecars and mTLS: splits, header routing, mirroring,
retries with budgets, timeouts, circuit breaking, outlier ejection, faults, rate limits.

One client sidecar ("frontend") calls service "catalog", served by several server sidecars,
each in front of its own app instance whose behaviour (failure rate, delay) the test sets.
Route tables are installed directly as control-plane snapshots (docs/internals.md §8).
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gossamer.control.ca import CertificateAuthority
from gossamer.proxy.process.settings import Address
from tests.sidecar_harness import LoopThread, Sidecar, identity, recv_response, start_sidecar


@dataclass
class Instance:
    """One app instance: answers with its name; fails or stalls as told."""

    name: str
    fail_rate: float = 0.0
    fail_status: int = 500
    delay: float = 0.0
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    paths: list[str] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":")[1])
                if length:
                    await reader.readexactly(length)
                self.requests += 1
                self.paths.append(path)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    if self.delay:
                        await asyncio.sleep(self.delay)
                finally:
                    self.in_flight -= 1
                status = self.fail_status if self.rng.random() < self.fail_rate else 200
                body = self.name.encode()
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nx-instance: %b\r\n\r\n%b"
                    % (status, len(body), body, body)
                )
                await writer.drain()
        finally:
            writer.close()


class Mesh:
    def __init__(self, tmp: Path, instances: list[tuple[str, dict[str, str]]]) -> None:
        self.lt = LoopThread()
        self.ca = CertificateAuthority.load_or_create(tmp / "ca")
        self.instances: dict[str, Instance] = {}
        self.labels: dict[str, dict[str, str]] = {}
        self.sidecars: dict[str, Sidecar] = {}
        self.servers: list[asyncio.Server] = []
        for name, labels in instances:
            inst = Instance(name)
            server = self.lt.run(asyncio.start_server(inst.serve, "127.0.0.1", 0))
            self.servers.append(server)
            app = Address("127.0.0.1", server.sockets[0].getsockname()[1])
            self.sidecars[name] = self.lt.run(start_sidecar(self.ca, tmp / name, "catalog", app))
            self.instances[name] = inst
            self.labels[name] = labels
        self.client = self.lt.run(start_sidecar(self.ca, tmp / "frontend", "frontend", None))
        self.version = 0

    def endpoints(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        return [
            {"address": "127.0.0.1", "port": self.sidecars[n].inbound.port,  # type: ignore[union-attr]
             "labels": self.labels[n]}
            for n in (names or list(self.instances))
        ]

    def install(self, **catalog: Any) -> None:
        """Install a snapshot where catalog has all endpoints plus the given extra fields."""
        self.version += 1
        service = {
            "name": "catalog", "namespace": "default", "identity": identity("catalog").uri,
            "protocol": "http", "endpoints": self.endpoints(),
        }
        service.update(catalog)
        snap = {
            "version": self.version,
            "proxy": {"service": "frontend", "namespace": "default",
                      "identity": identity("frontend").uri},
            "inbound": {"mtls": "STRICT"},
            "outbound": {"services": [service], "unknown": []},
        }

        async def apply() -> None:
            self.client.state.apply_snapshot(self.version, snap)

        self.lt.run(apply())

    def install_inbound(self, name: str, rate_limit: dict[str, Any]) -> None:
        snap = {
            "version": 1,
            "proxy": {"service": "catalog", "namespace": "default",
                      "identity": identity("catalog").uri},
            "inbound": {"mtls": "STRICT", "rate_limit": rate_limit},
            "outbound": {"services": [], "unknown": []},
        }

        async def apply() -> None:
            self.sidecars[name].state.apply_snapshot(1, snap)

        self.lt.run(apply())

    def connect(self) -> socket.socket:
        assert self.client.outbound is not None
        return socket.create_connection(("127.0.0.1", self.client.outbound.port), timeout=10)

    def get(
        self, sock: socket.socket, path: str = "/", headers: str = ""
    ) -> tuple[int, dict[str, str], bytes]:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: catalog\r\n{headers}\r\n".encode())
        return recv_response(sock)

    def close(self) -> None:
        async def stop() -> None:
            for sc in [*self.sidecars.values(), self.client]:
                await sc.close()
            for server in self.servers:
                server.close()
            await asyncio.sleep(0.05)

        self.lt.run(stop())
        self.lt.stop()


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path, [("v1", {"version": "v1"}), ("v2", {"version": "v2"})])
    yield mesh
    mesh.close()


@pytest.fixture
def three(tmp_path: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path, [(f"r{i}", {"version": "v1"}) for i in (1, 2, 3)])
    yield mesh
    mesh.close()


@pytest.fixture
def one(tmp_path: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path, [("only", {"version": "v1"})])
    yield mesh
    mesh.close()


def split_rule(v1: int, v2: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": "catalog/split",
        "matches": [],
        "backends": [
            {"service": "catalog.default", "subset": {"version": "v1"}, "weight": v1},
            {"service": "catalog.default", "subset": {"version": "v2"}, "weight": v2},
        ],
        **extra,
    }


def retry(**kw: Any) -> dict[str, Any]:
    return {"attempts": 3, "on": ["5xx"], "backoff_base_ms": 1, "backoff_max_ms": 5, **kw}


class TestRouting:
    def test_weighted_split_90_10(self, canary: Mesh) -> None:
        """2,000 requests under a 90/10 split land within ±3 points of 10% on v2."""
        canary.install(http_routes=[split_rule(90, 10)])
        with canary.connect() as sock:
            for _ in range(2000):
                assert canary.get(sock)[0] == 200
        v2 = canary.instances["v2"].requests / 2000
        assert abs(v2 - 0.10) <= 0.03, v2

    def test_header_match_sends_canary_to_v2_only(self, canary: Mesh) -> None:
        """x-canary: 1 goes to v2; everything else to v1."""
        v1 = {"service": "catalog.default", "subset": {"version": "v1"}, "weight": 1}
        v2 = {"service": "catalog.default", "subset": {"version": "v2"}, "weight": 1}
        canary.install(http_routes=[
            {"name": "catalog/canary",
             "matches": [{"headers": [{"name": "x-canary", "type": "Exact", "value": "1"}]}],
             "backends": [v2]},
            {"name": "catalog/default", "matches": [], "backends": [v1]},
        ])
        with canary.connect() as sock:
            for _ in range(50):
                assert canary.get(sock, headers="x-canary: 1\r\n")[1]["x-instance"] == "v2"
                assert canary.get(sock)[1]["x-instance"] == "v1"
        assert canary.instances["v2"].requests == 50
        assert canary.instances["v1"].requests == 50

    def test_path_rewrite_and_header_filters(self, canary: Mesh) -> None:
        canary.install(http_routes=[{
            "name": "catalog/rw",
            "matches": [{"path": {"type": "Prefix", "value": "/old"}}],
            "backends": [{"service": "catalog.default", "subset": {"version": "v1"}, "weight": 1}],
            "filters": {"rewrite": {"type": "ReplacePrefixMatch", "value": "/new"},
                        "response_headers": {"set": {"x-routed": "yes"}}},
        }])
        with canary.connect() as sock:
            status, headers, _ = canary.get(sock, "/old/items?q=1")
        assert status == 200
        assert headers["x-routed"] == "yes"
        assert canary.instances["v1"].paths == ["/new/items?q=1"]

    def test_redirect(self, canary: Mesh) -> None:
        canary.install(http_routes=[{
            "name": "catalog/moved", "matches": [{"path": {"type": "Exact", "value": "/old"}}],
            "filters": {"redirect": {"path": "/new", "status_code": 301}},
        }])
        with canary.connect() as sock:
            status, headers, _ = canary.get(sock, "/old")
        assert status == 301
        assert headers["location"].endswith("/new")
        assert canary.instances["v1"].requests + canary.instances["v2"].requests == 0

    def test_mirror_delivers_copies_without_touching_the_caller(self, canary: Mesh) -> None:
        """All traffic goes to v1; every request is mirrored to a slow v2, and the caller
        neither sees v2's answers nor waits for them."""
        canary.instances["v2"].delay = 0.5
        canary.install(http_routes=[{
            "name": "catalog/mirror", "matches": [],
            "backends": [{"service": "catalog.default", "subset": {"version": "v1"}, "weight": 1}],
            "filters": {"mirror": {"service": "catalog.default", "subset": {"version": "v2"},
                                   "percent": 100}},
        }])
        slowest = 0.0
        with canary.connect() as sock:
            for _ in range(20):
                started = time.monotonic()
                status, headers, _ = canary.get(sock)
                slowest = max(slowest, time.monotonic() - started)
                assert (status, headers["x-instance"]) == (200, "v1")
        assert slowest < 0.25, f"the caller waited for the mirror: {slowest:.2f}s"
        deadline = time.monotonic() + 5
        while canary.instances["v2"].requests < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert canary.instances["v2"].requests == 20


class TestRetries:
    def test_retries_hide_a_30_percent_failure_rate(self, one: Mesh) -> None:
        one.instances["only"].fail_rate = 0.3
        one.install(policy={
            "retry": retry(attempts=5), "retry_budget": {"ratio": 1.0, "min_per_second": 100},
        })
        with one.connect() as sock:
            ok = sum(one.get(sock)[0] == 200 for _ in range(500))
        assert ok / 500 > 0.99, ok

    def test_retry_budget_caps_load_when_everything_fails(self, one: Mesh) -> None:
        """With the backend failing 100% and generous attempts, upstream load stays within
        requests * (1 + ratio) + the per-second floor over the window."""
        one.instances["only"].fail_rate = 1.0
        one.install(policy={
            "retry": retry(attempts=10),
            "retry_budget": {"ratio": 0.2, "min_per_second": 1, "window_ms": 10000},
        })
        n = 300
        with one.connect() as sock:
            statuses = [one.get(sock)[0] for _ in range(n)]
        assert set(statuses) == {500}
        seen = one.instances["only"].requests
        assert seen <= n * 1.2 + 10 + 2, seen  # ratio 0.2, floor 1/s over 10 s, rounding
        assert seen > n  # some retries did happen

    def test_non_idempotent_requests_are_not_retried(self, one: Mesh) -> None:
        one.instances["only"].fail_rate = 1.0
        one.install(policy={"retry": retry()})
        with one.connect() as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: catalog\r\ncontent-length: 2\r\n\r\nhi")
            assert recv_response(sock)[0] == 500
        assert one.instances["only"].requests == 1

    def test_request_timeout_gives_504_on_time(self, one: Mesh) -> None:
        one.instances["only"].delay = 2.0
        one.install(policy={"timeout_ms": 300})
        with one.connect() as sock:
            started = time.monotonic()
            status, headers, _ = one.get(sock)
            elapsed = time.monotonic() - started
        assert (status, headers["x-gossamer-error"]) == (504, "upstream-timeout")
        assert abs(elapsed - 0.3) < 0.05, elapsed

    def test_per_try_timeout_is_retried(self, three: Mesh) -> None:
        """A stalled replica costs one per-try timeout; the retry lands elsewhere."""
        three.instances["r1"].delay = 5.0
        three.install(policy={
            "load_balancer": {"type": "RoundRobin"},
            "retry": retry(on=["reset"], per_try_timeout_ms=100),
            "retry_budget": {"ratio": 1.0, "min_per_second": 100},
        })
        with three.connect() as sock:
            for _ in range(6):
                assert three.get(sock)[0] == 200


class TestCircuitBreaking:
    def test_beyond_max_pending_callers_get_fast_503(self, one: Mesh) -> None:
        """max_connections 2, max_pending 2: of 12 concurrent slow requests, 4 are served
        (2 at a time) and 8 get an immediate 503 overflow; the app never sees more than 2."""
        one.instances["only"].delay = 0.3
        one.install(policy={"connection_pool": {"max_connections": 2, "max_pending": 2}})
        socks = [one.connect() for _ in range(12)]

        def call(s: socket.socket) -> tuple[int, str | None, float]:
            started = time.monotonic()
            s.sendall(b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")
            status, headers, _ = recv_response(s)
            s.close()
            return status, headers.get("x-gossamer-error"), time.monotonic() - started

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(call, socks))
        overflow = [r for r in results if r[0] == 503]
        print(results)
        assert len(overflow) == 8
        assert all(r[1] == "overflow" and r[2] < 0.25 for r in overflow)
        assert sum(r[0] == 200 for r in results) == 4
        assert one.instances["only"].max_in_flight <= 2


class TestOutlierDetection:
    def test_failing_replica_is_ejected_and_returns(self, three: Mesh) -> None:
        three.instances["r1"].fail_rate = 1.0
        three.install(policy={
            "load_balancer": {"type": "RoundRobin"},
            "outlier": {"consecutive_5xx": 3, "interval_ms": 1000, "base_ejection_ms": 1000,
                        "max_ejection_percent": 50},
        })
        with three.connect() as sock:
            for _ in range(30):
                three.get(sock)
            assert three.instances["r1"].requests == 3  # ejected after 3 consecutive 500s
            before = three.instances["r1"].requests
            for _ in range(30):
                assert three.get(sock)[0] == 200
            assert three.instances["r1"].requests == before
            three.instances["r1"].fail_rate = 0.0
            time.sleep(1.3)
            for _ in range(30):
                assert three.get(sock)[0] == 200
        assert three.instances["r1"].requests > before


class TestFaultsAndRateLimits:
    def test_abort_fault_hits_its_percentage(self, one: Mesh) -> None:
        fault = {"abort_status": 503, "abort_percent": 25}
        one.install(http_routes=[
            {"name": "catalog/chaos", "matches": [], "filters": {"fault": fault}}
        ])
        with one.connect() as sock:
            aborted = sum(one.get(sock)[0] == 503 for _ in range(1000))
        assert 0.20 <= aborted / 1000 <= 0.30

    def test_delay_fault(self, one: Mesh) -> None:
        one.install(http_routes=[{"name": "catalog/slow", "matches": [],
                                  "filters": {"fault": {"delay_ms": 200, "delay_percent": 100}}}])
        with one.connect() as sock:
            started = time.monotonic()
            assert one.get(sock)[0] == 200
        assert time.monotonic() - started >= 0.2

    def test_local_rate_limit_answers_429_with_retry_after(self, one: Mesh) -> None:
        one.install()
        one.install_inbound("only", {"requests_per_second": 5, "burst": 10})
        with one.connect() as sock:
            statuses = [one.get(sock) for _ in range(30)]
        ok = [s for s in statuses if s[0] == 200]
        limited = [s for s in statuses if s[0] == 429]
        assert 10 <= len(ok) <= 12  # the burst, plus what refilled during the loop
        assert limited and all(s[1]["x-gossamer-error"] == "rate-limited" for s in limited)
        assert all(int(s[1]["retry-after"]) >= 1 for s in limited)


class TestLoadBalancing:
    def test_consistent_hash_keeps_a_user_on_one_replica(self, three: Mesh) -> None:
        """Hashing on a header: each user always lands on the same replica; users spread."""
        three.install(policy={"load_balancer": {"type": "ConsistentHash", "hash_header": "x-user"}})
        homes: dict[str, set[str]] = {}
        with three.connect() as sock:
            for round_ in range(5):
                for user in range(30):
                    _, headers, _ = three.get(sock, headers=f"x-user: u{user}\r\n")
                    homes.setdefault(f"u{user}", set()).add(headers["x-instance"])
                assert round_ >= 0
        assert all(len(h) == 1 for h in homes.values())
        assert len({next(iter(h)) for h in homes.values()}) == 3

    def test_least_request_avoids_the_busy_replica(self, three: Mesh) -> None:
        """With one replica stalled on a long request, new requests go to the idle ones."""
        three.instances["r1"].delay = 1.0
        three.install(policy={"load_balancer": {"type": "LeastRequest"}})
        slow = three.connect()
        # Occupy r1 (and possibly others) with slow requests in the background.
        slow.sendall(b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")
        time.sleep(0.1)
        three.instances["r1"].delay = 0.0
        seen = set()
        with three.connect() as sock:
            for _ in range(20):
                seen.add(three.get(sock)[1]["x-instance"])
        slow.close()
        assert len(seen) >= 2
